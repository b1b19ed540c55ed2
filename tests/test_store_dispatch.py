"""Event store (SQLite WAL) and dispatcher: durable, ordered, failing sinks isolated."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from service.events import EventMessage, EventRecord, new_event_id, utc_now
from service.sinks.dispatcher import Dispatcher
from service.sinks.store import EventStore, StoreError


def record(class_name: str = "smoke_alarm", start_s: float = 1.0, **changes: object) -> EventRecord:
    now = utc_now()
    base = EventRecord(id=new_event_id(), source="hall", class_name=class_name, start_s=start_s,
                       detected_s=start_s + 0.2, started_at=now, detected_at=now, score=0.9, model_version="t")
    return EventRecord(**{**base.__dict__, **changes})


def test_events_round_trip_and_paginate_newest_first(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "h.db")
    events = [record(start_s=float(i), class_name="baby_cry" if i % 2 else "smoke_alarm") for i in range(5)]
    for event in events:
        store.save_event(event)
    closed = events[0].ended(end_s=3.0, ended_at=utc_now(), peak_score=0.95, mean_score=0.8, flicker=1)
    store.save_event(closed)
    assert store.get_event(events[0].id).to_dict() == closed.to_dict()  # type: ignore[union-attr]
    page = store.list_events(limit=2)
    assert [e.id for _, e in page] == [events[4].id, events[3].id]
    rest = store.list_events(limit=10, before_seq=page[-1][0])
    assert [e.id for _, e in rest] == [e.id for e in reversed(events[:3])]
    assert {e.class_name for _, e in store.list_events(class_name="baby_cry")} == {"baby_cry"}
    assert store.integrity_ok()


def test_open_events_left_by_a_crash_are_closed_on_start(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "h.db")
    open_event = record()
    store.save_event(open_event)
    store.close()
    reopened = EventStore(tmp_path / "h.db")
    (closed,) = reopened.close_dangling()
    assert closed.id == open_event.id and not closed.is_open and closed.extra["closed_by"] == "restart"
    assert reopened.close_dangling() == []


def test_outbox_keeps_order_retries_and_failures(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "h.db")
    seqs = [store.outbox_put("mqtt", {"n": i}) for i in range(3)]
    store.outbox_put("other", {"n": 99})
    assert [item.payload["n"] for item in store.outbox_due("mqtt")] == [0, 1, 2]
    store.outbox_delivered(seqs[0])
    store.outbox_retry(seqs[1], next_attempt_at=utc_now().timestamp() + 60, error="broker down")
    assert [item.payload["n"] for item in store.outbox_due("mqtt")] == [2]
    store.outbox_failed(seqs[2], "HTTP 400")
    assert store.outbox_counts("mqtt") == {"pending": 1, "delivered": 1, "failed": 1}


def test_prune_removes_old_events(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "h.db")
    old = record(started_at=utc_now() - timedelta(days=40), clip_path="old.wav")
    store.save_event(old)
    store.save_event(record())
    assert store.prune(utc_now() - timedelta(days=30)) == ["old.wav"]
    assert store.get_event(old.id) is None and store.count_events() == 1


def test_unwritable_store_gives_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot open event store"):
        EventStore(blocker / "h.db")


class RecordingSink:
    def __init__(self, name: str, delay_s: float = 0.0, fail: bool = False) -> None:
        self.name, self.delay_s, self.fail = name, delay_s, fail
        self.seen: list[str] = []

    async def handle(self, message: EventMessage) -> None:
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("receiver exploded")
        self.seen.append(f"{message.phase}:{message.event.id}")


def test_dispatcher_stores_first_and_isolates_failing_and_slow_sinks(tmp_path: Path) -> None:
    async def scenario() -> tuple[RecordingSink, RecordingSink, RecordingSink, Dispatcher, list[str]]:
        store = EventStore(tmp_path / "h.db")
        good, slow, bad = RecordingSink("good"), RecordingSink("slow", delay_s=0.5), RecordingSink("bad", fail=True)
        dispatcher = Dispatcher(store, [bad, slow, good])
        await dispatcher.start()
        events = [record() for _ in range(3)]
        started = asyncio.get_running_loop().time()
        for event in events:
            await dispatcher.publish(EventMessage("start", event))
        publish_s = asyncio.get_running_loop().time() - started
        assert publish_s < 0.4  # publishing never waits for a sink
        assert store.count_events() == 3  # stored before any sink ran
        await asyncio.wait_for(_until(lambda: len(good.seen) == 3), 5)
        assert slow.seen == []  # still working on the first one
        await dispatcher.stop(timeout_s=5)
        return good, slow, bad, dispatcher, [f"start:{e.id}" for e in events]

    good, slow, bad, dispatcher, expected = asyncio.run(scenario())
    assert good.seen == expected and slow.seen == expected
    assert bad.seen == [] and dispatcher.failures["bad"] == 3 and dispatcher.failures["good"] == 0


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.01)
