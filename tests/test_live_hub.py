"""LiveHub logic: throttling to the tick, slow clients dropped, thread-safe control fan-out."""

from __future__ import annotations

import asyncio
import json
import threading

from service.api.live import CLOSE, LiveHub
from service.controls import ClassControl, ClassControls
from service.events import EventMessage, EventRecord, utc_now
from service.sinks.dispatcher import LiveUpdate


def update(audio_s: float, source: str = "nursery") -> LiveUpdate:
    return LiveUpdate(
        source=source,
        audio_s=audio_s,
        scores={"baby_cry": 0.1},
        level_dbfs=-40.0,
        active={"baby_cry": False},
    )


def drain(queue: asyncio.Queue) -> list:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


def test_updates_are_sent_at_the_tick_only_the_latest_per_source() -> None:
    async def scenario() -> list:
        hub = LiveHub(interval_s=0.05)
        await hub.start()
        client = hub.connect()
        for i in range(200):  # a fast file source: far more than 10 Hz
            hub.on_live(update(i / 100))
        hub.on_live(update(0.5, source="hall"))
        await asyncio.sleep(0.12)
        await hub.stop()
        return drain(client.queue)

    items = asyncio.run(asyncio.wait_for(scenario(), 5))
    live = [json.loads(i) for i in items if i is not CLOSE]
    assert {m["source"] for m in live} == {"nursery", "hall"}
    nursery = [m for m in live if m["source"] == "nursery"]
    assert len(nursery) == 1 and nursery[0]["audio_s"] == 1.99  # the latest, once
    assert items[-1] is CLOSE  # stop() tells every client to close


def test_a_slow_client_is_dropped_and_the_others_keep_getting_everything() -> None:
    async def scenario() -> tuple[LiveHub, list, list, bool]:
        hub = LiveHub(client_queue=4)
        slow, fast = hub.connect(), hub.connect()
        received = []
        for i in range(10):
            hub.broadcast({"type": "test", "i": i})  # never blocks, whatever the clients do
            received += drain(fast.queue)
        return hub, drain(slow.queue), received, slow.dropped

    hub, slow_items, fast_items, dropped = asyncio.run(asyncio.wait_for(scenario(), 5))
    assert dropped and hub.clients_dropped == 1 and len(hub.clients) == 1
    assert slow_items[-1] is CLOSE  # its handler closes the socket (code 1013)
    assert [json.loads(i)["i"] for i in fast_items] == list(range(10))
    assert hub.status() == {"state": "ok", "clients": 1, "clients_dropped": 1}


def test_events_are_counted_and_sent_at_once() -> None:
    now = utc_now()
    record = EventRecord(
        id="e1",
        source="nursery",
        class_name="baby_cry",
        start_s=1.0,
        detected_s=1.2,
        started_at=now,
        detected_at=now,
        score=0.9,
        model_version="t",
    )

    async def scenario() -> tuple[LiveHub, list]:
        hub = LiveHub()
        client = hub.connect()
        await hub.handle(EventMessage("start", record))
        await hub.handle(EventMessage("end", record.ended(3.0, now, 0.95, 0.8, 0)))
        return hub, drain(client.queue)

    hub, items = asyncio.run(asyncio.wait_for(scenario(), 5))
    assert [json.loads(i)["phase"] for i in items] == ["start", "end"]
    assert json.loads(items[0])["event"]["class"] == "baby_cry"
    assert hub.events_total[("nursery", "baby_cry")] == 1


def test_control_changes_from_another_thread_reach_clients_through_the_loop() -> None:
    controls = ClassControls([ClassControl("smoke_alarm")])

    async def scenario() -> list:
        hub = LiveHub(controls)
        await hub.start()
        client = hub.connect()
        # Like an MQTT command arriving on paho's network thread.
        thread = threading.Thread(
            target=controls.update, args=("smoke_alarm",), kwargs={"enabled": False}
        )
        thread.start()
        thread.join(5)
        message = await asyncio.wait_for(client.queue.get(), 5)
        await hub.stop()
        return [message]

    (message,) = asyncio.run(asyncio.wait_for(scenario(), 10))
    data = json.loads(message)
    assert data["type"] == "control" and data["control"]["enabled"] is False
