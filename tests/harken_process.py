"""The real `harken run` process for fault-injection tests, and what tests read beside it.

The process runs from a YAML config the test writes; its log goes to a file the test
can search; audio can be fed through stdin (source url `-`), so a test decides exactly
when each event happens relative to the faults it injects. The store is read with a
second, read-only SQLite connection, as an operator's `sqlite3` would.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from models import synth

REPO = Path(__file__).resolve().parent.parent
RATE = 16000


def alarm_segment(seed: int, quiet_after_s: float = 8.0) -> np.ndarray:
    """1 s of room noise, one T3 smoke-alarm cycle (4 s), then quiet long enough for the
    event to end (smoke_alarm's merge gap is 6 s): one complete event per segment."""
    rng = np.random.default_rng(seed)
    alarm, _ = synth.alarm("t3", 1, rng)
    audio = (synth.background(1.0 + len(alarm) / RATE + quiet_after_s, rng) * 0.02).astype(np.float32)
    audio[RATE : RATE + len(alarm)] += 0.3 * alarm
    return audio


def quiet(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (synth.background(seconds, rng) * 0.02).astype(np.float32)


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll until `predicate()` is truthy; its value is returned. Fails naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


class Store:
    """Read-only view of a harken store, opened per query (the daemon may be writing)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def integrity(self) -> str:
        db = sqlite3.connect(str(self.path), timeout=5)
        try:
            return str(db.execute("PRAGMA integrity_check").fetchone()[0])
        finally:
            db.close()

    def events(self) -> list[dict[str, Any]]:
        import json

        return [json.loads(row[0]) for row in self.query("SELECT data FROM events ORDER BY seq")]

    def ended(self, class_name: str = "smoke_alarm") -> int:
        """Events of a class that have ended (the test scenes are smoke alarms; a stray
        event of another class in the room noise must not throw the count off)."""
        rows = self.query("SELECT COUNT(*) FROM events WHERE end_s IS NOT NULL AND class = ?", (class_name,))
        return int(rows[0][0])

    def outbox(self, sink: str) -> list[dict[str, Any]]:
        import json

        rows = self.query("SELECT payload FROM outbox WHERE sink = ? ORDER BY seq", (sink,))
        return [json.loads(row[0]) for row in rows]

    def pending(self, sink: str) -> int:
        rows = self.query(
            "SELECT COUNT(*) FROM outbox WHERE sink = ? AND delivered_at IS NULL AND failed_at IS NULL", (sink,)
        )
        return int(rows[0][0])


class Harken:
    """`python -m service.cli run --config <root>/harken.yaml`, logging to <root>/harken.log."""

    def __init__(
        self,
        root: Path,
        config: dict[str, Any],
        stdin: bool = False,
        file_size_limit: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.extra_env = env or {}
        self.config = config
        self.stdin = stdin
        self.file_size_limit = file_size_limit
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = root / "harken.log"
        self.runs = 0
        self._log_offset = 0
        self._reader: threading.Thread | None = None

    @property
    def store(self) -> Store:
        return Store(Path(self.config["store"]["path"]))

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.config['api']['port']}"

    def start(self) -> Harken:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "harken.yaml").write_text(yaml.safe_dump(self.config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("HARKEN_")}
        env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            env.pop(name, None)
        limit = self.file_size_limit

        def limits() -> None:
            if limit is not None:
                # What a full disk looks like to one process: writes past `limit` bytes fail
                # (EFBIG; Python ignores SIGXFSZ), whoever runs the test, root included.
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        self.runs += 1
        env.update(self.extra_env)
        with self.log_path.open("ab") as log:
            log.write(f"===== run {self.runs} =====\n".encode())
        self._log_offset = self.log_path.stat().st_size
        # The log reaches its file through a pipe and this process, so a file size limit
        # set on harken (the disk-full test) does not cut its own log short.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "run", "--config", str(self.root / "harken.yaml")],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE if self.stdin else subprocess.DEVNULL,
            preexec_fn=limits,
        )
        self._reader = threading.Thread(target=self._copy_log, args=(self.process,), daemon=True)
        self._reader.start()
        return self

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(5)

    def _copy_log(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        with self.log_path.open("ab") as log:
            for line in iter(process.stdout.readline, b""):
                log.write(line)
                log.flush()

    # ------------------------------------------------------------------ reading
    def log(self, this_run: bool = False) -> str:
        text = self.log_path.read_bytes()
        return text[self._log_offset :].decode(errors="replace") if this_run else text.decode(errors="replace")

    def wait_log(self, pattern: str, timeout_s: float = 30.0, count: int = 1) -> None:
        def seen() -> bool:
            self.check_alive()
            return len(re.findall(pattern, self.log(this_run=True))) >= count

        wait_until(seen, timeout_s, f"{count} log line(s) matching {pattern!r}")

    def check_alive(self) -> None:
        assert self.process is not None
        code = self.process.poll()
        assert code is None, f"harken exited with {code}:\n{self.log()[-4000:]}"

    def get(self, path: str, token: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(self.api + path, headers=headers, timeout=5)

    def wait_api(self, timeout_s: float = 30.0) -> None:
        def up() -> bool:
            self.check_alive()
            try:
                return self.get("/api/health").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, timeout_s, "the API to answer")

    # ------------------------------------------------------------------ driving
    def feed(self, audio: np.ndarray) -> None:
        """Write audio to harken's stdin (blocks while harken is behind; the pipe is small)."""
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(pcm16(audio))
        self.process.stdin.flush()

    def close_stdin(self) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.close()

    def terminate(self, timeout_s: float = 30.0) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds until it exited)."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout_s)
        elapsed_s = time.monotonic() - started
        self._join_reader()
        return code, elapsed_s

    def wait_exit(self, timeout_s: float = 30.0) -> int:
        assert self.process is not None
        code = self.process.wait(timeout_s)
        self._join_reader()
        return code

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self._join_reader()
        if self.process.stdin is not None:
            self.process.stdin.close()

    def cleanup(self) -> None:
        """Whatever happened in the test: no harken process outlives it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if self._reader is not None:
            self._reader.join(5)
        if self.process is not None and self.process.stdin is not None and not self.process.stdin.closed:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
