"""SQLite event store (WAL): events, a durable outbox for delivering sinks, and settings.

One connection guarded by a lock; every write is a short transaction, so calling it from
the event loop costs well under a millisecond. The outbox is what makes "nothing lost"
true for MQTT and webhooks: a message is written here before delivery is attempted and
marked delivered only when the receiver acknowledged it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.events import EventMessage, EventRecord, iso

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    source TEXT NOT NULL,
    class TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    start_s REAL NOT NULL,
    end_s REAL,
    peak_score REAL,
    feedback TEXT,
    clip_path TEXT,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_class_time ON events (class, started_at);
CREATE INDEX IF NOT EXISTS events_time ON events (started_at);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sink TEXT NOT NULL,
    created_at REAL NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    delivered_at REAL,
    failed_at REAL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (sink, delivered_at, failed_at, seq);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class StoreError(RuntimeError):
    """The store cannot be opened or written; the message says where and why."""


@dataclass(frozen=True)
class OutboxItem:
    seq: int
    sink: str
    payload: dict[str, Any]
    attempts: int
    created_at: float


class EventStore:
    """Events, outbox and settings in one SQLite file."""

    name = "store"

    def __init__(self, path: str | Path, clips_dir: Path | None = None) -> None:
        self.path = Path(path)
        self._clips_dir = clips_dir
        in_memory = str(path) == ":memory:"
        try:
            if not in_memory:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open event store {self.path}: {exc}") from None
        self._lock = threading.Lock()
        self.write_errors = 0
        self.last_error: str | None = None
        self.last_write_failed = False
        #: Set when this store stands in for one that could not be opened (see `in_memory`).
        self.degraded_reason: str | None = None

    @classmethod
    def in_memory(cls, reason: str, clips_dir: Path) -> EventStore:
        """A store in RAM standing in for one that cannot be opened (disk full, no permission):
        detection, notifications and the API go on; nothing survives a restart."""
        store = cls(":memory:", clips_dir=clips_dir)
        store.degraded_reason = reason
        return store

    @property
    def clips_dir(self) -> Path:
        return self._clips_dir if self._clips_dir is not None else self.path.parent / "clips"

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                self._db.execute("COMMIT")
                self.last_write_failed = False
            except BaseException as exc:
                if self._db.in_transaction:
                    with suppress(sqlite3.Error):  # a failed ROLLBACK must not hide the real error
                        self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    self.last_write_failed = True
                    self.write_errors += 1
                    self.last_error = f"{self.path}: {exc}"
                    raise StoreError(self.last_error) from None
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def integrity_ok(self) -> bool:
        with self._lock:
            return self._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    # ----------------------------------------------------------------- events
    def save_event(self, event: EventRecord, outbox: Iterable[tuple[str, dict[str, Any]]] = ()) -> None:
        """Insert or update an event; `outbox` entries (sink, payload) commit in the same
        transaction, so a crash can never keep the event and lose its notifications."""
        data = json.dumps(event.to_dict())
        now = time.time()
        with self._tx() as db:
            for sink, payload in outbox:
                db.execute(
                    "INSERT INTO outbox (sink, created_at, payload, next_attempt_at) VALUES (?, ?, ?, ?)",
                    (sink, now, json.dumps(payload), now),
                )
            db.execute(
                """INSERT INTO events (id, source, class, started_at, ended_at, start_s, end_s,
                                       peak_score, clip_path, data)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(id) DO UPDATE SET ended_at=excluded.ended_at, end_s=excluded.end_s,
                       peak_score=excluded.peak_score, clip_path=excluded.clip_path, data=excluded.data""",
                (event.id, event.source, event.class_name, iso(event.started_at), iso(event.ended_at),
                 event.start_s, event.end_s, event.peak_score, event.clip_path, data),
            )

    async def handle(self, message: EventMessage) -> None:
        """Sink interface; the dispatcher writes to the store itself before other sinks."""
        self.save_event(message.event)

    def get_event(self, event_id: str) -> EventRecord | None:
        with self._lock:
            row = self._db.execute("SELECT data, feedback FROM events WHERE id = ?", (event_id,)).fetchone()
        if row is None:
            return None
        return _record(row[0], row[1])

    def list_events(
        self,
        class_name: str | None = None,
        source: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        before_seq: int | None = None,
    ) -> list[tuple[int, EventRecord]]:
        """Newest first; `before_seq` is the pagination cursor (seq of the last row seen)."""
        clauses, args = [], []
        for column, value in (("class", class_name), ("source", source)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            clauses.append("started_at >= ?")
            args.append(iso(since))
        if until is not None:
            clauses.append("started_at < ?")
            args.append(iso(until))
        if before_seq is not None:
            clauses.append("seq < ?")
            args.append(before_seq)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT seq, data, feedback FROM events {where} ORDER BY seq DESC LIMIT ?", (*args, limit)
            ).fetchall()
        return [(seq, _record(data, feedback)) for seq, data, feedback in rows]

    def set_feedback(self, event_id: str, feedback: str) -> bool:
        with self._tx() as db:
            cur = db.execute("UPDATE events SET feedback = ? WHERE id = ?", (feedback, event_id))
        return cur.rowcount > 0

    def set_clip(self, event_id: str, clip_path: str) -> None:
        with self._tx() as db:
            row = db.execute("SELECT data FROM events WHERE id = ?", (event_id,)).fetchone()
            if row is None:
                return
            data = json.loads(row[0])
            data["clip_path"] = clip_path
            db.execute("UPDATE events SET clip_path = ?, data = ? WHERE id = ?",
                       (clip_path, json.dumps(data), event_id))

    def close_dangling(self, save: bool = True) -> list[EventRecord]:
        """After a crash: close events that were left open, at the last moment known for sure
        (their detection: later audio died with the crashed process), marked `closed_by: restart`.

        With `save=False` the closed records are only returned, for a caller that stores them
        together with their notifications (the daemon does, through its dispatcher, so that a
        crash during start-up cannot close an event without ever announcing its end).
        """
        closed: list[EventRecord] = []
        with self._lock:
            rows = self._db.execute("SELECT data, feedback FROM events WHERE end_s IS NULL").fetchall()
        for data, feedback in rows:
            event = _record(data, feedback)
            extra = {**event.extra, "closed_by": "restart"}
            ended = event.ended(
                end_s=event.detected_s, ended_at=event.detected_at, peak_score=event.score,
                mean_score=event.score, flicker=0,
            )
            ended = EventRecord(**{**ended.__dict__, "extra": extra})
            if save:
                self.save_event(ended)
            closed.append(ended)
        return closed

    def prune(self, older_than: datetime) -> list[str]:
        """Delete events (and return their clip paths) that started before `older_than`."""
        with self._tx() as db:
            rows = db.execute("SELECT clip_path FROM events WHERE started_at < ?", (iso(older_than),)).fetchall()
            db.execute("DELETE FROM events WHERE started_at < ?", (iso(older_than),))
            db.execute("DELETE FROM outbox WHERE delivered_at IS NOT NULL AND delivered_at < ?",
                       (older_than.timestamp(),))
        return [r[0] for r in rows if r[0]]

    def count_events(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    # ----------------------------------------------------------------- outbox
    def outbox_put(self, sink: str, payload: dict[str, Any]) -> int:
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO outbox (sink, created_at, payload, next_attempt_at) VALUES (?, ?, ?, ?)",
                (sink, now, json.dumps(payload), now),
            )
        return int(cur.lastrowid or 0)

    def outbox_due(self, sink: str, now: float | None = None, limit: int = 100) -> list[OutboxItem]:
        """Undelivered items of a sink in order; only those whose retry time has come."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute(
                """SELECT seq, sink, payload, attempts, created_at FROM outbox
                   WHERE sink = ? AND delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= ?
                   ORDER BY seq LIMIT ?""",
                (sink, now, limit),
            ).fetchall()
        return [OutboxItem(seq, s, json.loads(p), a, c) for seq, s, p, a, c in rows]

    def outbox_next_attempt(self, sink: str) -> float | None:
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(next_attempt_at) FROM outbox WHERE sink = ? AND delivered_at IS NULL AND failed_at IS NULL",
                (sink,),
            ).fetchone()
        return row[0]

    def outbox_delivered(self, seq: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE outbox SET delivered_at = ?, attempts = attempts + 1 WHERE seq = ?", (time.time(), seq))

    def outbox_retry(self, seq: int, next_attempt_at: float, error: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? WHERE seq = ?",
                (next_attempt_at, error[:500], seq),
            )

    def outbox_failed(self, seq: int, error: str) -> None:
        """Give up on an item (a permanent error such as HTTP 400); it stays for inspection."""
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, failed_at = ?, last_error = ? WHERE seq = ?",
                (time.time(), error[:500], seq),
            )

    def outbox_counts(self, sink: str) -> dict[str, int]:
        with self._lock:
            pending, delivered, failed = self._db.execute(
                """SELECT SUM(delivered_at IS NULL AND failed_at IS NULL), SUM(delivered_at IS NOT NULL),
                          SUM(failed_at IS NOT NULL) FROM outbox WHERE sink = ?""",
                (sink,),
            ).fetchone()
        return {"pending": pending or 0, "delivered": delivered or 0, "failed": failed or 0}

    # ----------------------------------------------------------------- settings
    def get_setting(self, key: str) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put_setting(self, key: str, value: Any) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )


def _record(data: str, feedback: str | None) -> EventRecord:
    values = json.loads(data)
    record = EventRecord.from_dict(values)
    if feedback:
        record = EventRecord(**{**record.__dict__, "extra": {**record.extra, "feedback": feedback}})
    return record


def default_store_path() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("harken", appauthor=False)) / "harken.db"


def utc_from_timestamp(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)
