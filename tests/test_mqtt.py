"""The MQTT sink against a real Mosquitto: discovery, states, events, outage, will, auth."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import yaml

from service.config import MqttConfig, Settings
from service.controls import ClassControl, ClassControls
from service.daemon import run_daemon
from service.events import EventMessage, EventRecord, new_event_id, utc_now
from service.sinks.dispatcher import Dispatcher, LiveUpdate
from service.sinks.ha_discovery import DeviceInfo
from service.sinks.mqtt import MqttSink
from service.sinks.store import EventStore
from tests.conftest import hand_over, require_program, t3_scene
from tests.mqtt_helpers import Broker, Recorder

pytestmark = pytest.mark.integration

CLASSES = ["baby_cry", "smoke_alarm", "glass_break"]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One anonymous broker for the tests that do not stop it; each test uses its own node id."""
    server = Broker(
        tmp_path_factory.mktemp("mosquitto"),
        require_program("mosquitto"),
        require_program("mosquitto_pub"),
    )
    server.start()
    yield server
    server.stop()


def _programs() -> tuple[str, str]:
    return require_program("mosquitto"), require_program("mosquitto_pub")


def _sink(
    store: EventStore, port: int, node: str, **overrides: Any
) -> tuple[MqttSink, ClassControls]:
    controls = ClassControls([ClassControl(name) for name in CLASSES])
    values = {"reconnect_min_s": 0.2, "reconnect_max_s": 1.0, **overrides}
    config = MqttConfig(enabled=True, host="127.0.0.1", port=port, node_id=node, **values)
    device = DeviceInfo(node_id=node, sw_version="test", model_version="test-model 1")
    return MqttSink(config, store, controls, CLASSES, device), controls


def _event(index: int, class_name: str = "smoke_alarm") -> EventRecord:
    now = utc_now()
    return EventRecord(
        id=new_event_id(),
        source="test",
        class_name=class_name,
        start_s=10.0 * index,
        detected_s=10.0 * index + 0.2,
        started_at=now,
        detected_at=now,
        score=0.9,
        model_version="test-model 1",
        level_dbfs=-20.0,
    )


def _ended(event: EventRecord) -> EventRecord:
    return event.ended(
        end_s=event.start_s + 3.0, ended_at=utc_now(), peak_score=0.97, mean_score=0.9, flicker=0
    )


async def _until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- the daemon end to end
def test_daemon_publishes_discovery_availability_state_events_and_level(
    broker: Broker, tmp_path: Path
) -> None:
    node = "e2e"
    wav = tmp_path / "t3.wav"
    sf.write(str(wav), t3_scene(), 16000, subtype="PCM_16")
    recorder = Recorder(broker.port, [f"homeassistant/+/{node}/+/config", f"harken/{node}/#"])
    settings = Settings.model_validate(
        {
            "sources": [{"name": "kitchen", "url": f"file:{wav}", "realtime": False}],
            "store": {"path": str(tmp_path / "harken.db")},
            "api": {"enabled": False},
            "mqtt": {
                "enabled": True,
                "host": "127.0.0.1",
                "port": broker.port,
                "node_id": node,
                "level_interval_s": 0.05,
            },
        }
    )
    try:
        assert asyncio.run(asyncio.wait_for(run_daemon(settings), 60)) == 0
        availability = f"harken/{node}/availability"
        recorder.wait_for(
            lambda ms: any(m.topic == availability and m.text == "offline" for m in ms),
            10,
            "offline after the clean shutdown",
        )

        # Discovery: retained, valid JSON, the smoke alarm is a smoke binary sensor of this node.
        config = json.loads(
            recorder.on(f"homeassistant/binary_sensor/{node}/smoke_alarm/config")[0].payload
        )
        assert config["device_class"] == "smoke"
        assert config["state_topic"] == f"harken/{node}/smoke_alarm/state"
        assert config["availability_topic"] == availability
        assert node in config["unique_id"]
        assert config["device"]["identifiers"] == [f"harken_{node}"]
        assert recorder.on(f"homeassistant/event/{node}/smoke_alarm_event/config")
        assert recorder.on(f"homeassistant/sensor/{node}/level/config")

        # Availability online while running, offline at the end.
        states = [m.text for m in recorder.on(availability)]
        assert states[0] == "online" and states[-1] == "offline"

        # The smoke alarm turned the binary sensor ON, then OFF; attributes named the event.
        smoke = [m.text for m in recorder.on(f"harken/{node}/smoke_alarm/state")]
        assert "ON" in smoke and smoke[-1] == "OFF" and smoke.index("ON") < len(smoke) - 1
        attributes = [
            json.loads(m.payload) for m in recorder.on(f"harken/{node}/smoke_alarm/attributes")
        ]
        on_attributes = next(a for a in attributes if a["state"] == "ON")
        assert on_attributes["event_id"] and on_attributes["score"] > 0.5 and on_attributes["since"]

        # Events: start and end of the alarm, exactly as the store has them.
        events = [json.loads(m.payload) for m in recorder.on(f"harken/{node}/events")]
        smoke_events = [e for e in events if e["class"] == "smoke_alarm"]
        assert [e["phase"] for e in smoke_events][:2] == ["start", "end"]
        store = EventStore(tmp_path / "harken.db")
        try:
            stored = store.get_event(smoke_events[1]["id"])
            assert stored is not None
            # The clip is written after the end message, so only the clip path differs.
            assert smoke_events[1] == {"phase": "end", **stored.to_dict(), "clip_path": None}
            assert store.outbox_counts("mqtt") == {
                "pending": 0,
                "delivered": len(events),
                "failed": 0,
            }
        finally:
            store.close()

        levels = [float(m.text) for m in recorder.on(f"harken/{node}/level")]
        assert levels and all(-120.0 <= level <= 3.0 for level in levels)
    finally:
        recorder.close()


# --------------------------------------------------------------------------- several sources
def test_daemon_with_two_sources_turns_on_the_right_rooms_sensor(
    broker: Broker, tmp_path: Path
) -> None:
    node = "rooms"
    alarm_wav, quiet_wav = tmp_path / "alarm.wav", tmp_path / "quiet.wav"
    scene = t3_scene()
    sf.write(str(alarm_wav), scene, 16000, subtype="PCM_16")
    quiet = np.random.default_rng(5).normal(0.0, 0.002, len(scene)).astype(np.float32)
    sf.write(str(quiet_wav), quiet, 16000, subtype="PCM_16")
    recorder = Recorder(broker.port, [f"homeassistant/+/{node}/+/config", f"harken/{node}/#"])
    settings = Settings.model_validate(
        {
            "sources": [
                {"name": "nursery", "url": f"file:{alarm_wav}", "realtime": False},
                {"name": "living_room", "url": f"file:{quiet_wav}", "realtime": False},
            ],
            "store": {"path": str(tmp_path / "harken.db")},
            "api": {"enabled": False},
            "mqtt": {
                "enabled": True,
                "host": "127.0.0.1",
                "port": broker.port,
                "node_id": node,
                "level_interval_s": 0.02,
            },
        }
    )
    base = f"harken/{node}"
    try:
        assert asyncio.run(asyncio.wait_for(run_daemon(settings), 60)) == 0
        recorder.wait_for(
            lambda ms: any(m.topic == f"{base}/availability" and m.text == "offline" for m in ms),
            10,
            "offline after the clean shutdown",
        )
        config = json.loads(
            recorder.on(f"homeassistant/binary_sensor/{node}/nursery-smoke_alarm/config")[0].payload
        )
        assert config["name"] == "Nursery smoke alarm" and config["device_class"] == "smoke"
        assert config["state_topic"] == f"{base}/nursery/smoke_alarm/state"
        assert node in config["unique_id"] and "nursery" in config["unique_id"]
        assert recorder.on(f"homeassistant/binary_sensor/{node}/living_room-smoke_alarm/config")
        assert recorder.on(f"homeassistant/sensor/{node}/living_room-level/config")

        def states(topic: str) -> list[str]:
            return [m.text for m in recorder.on(topic)]

        nursery = states(f"{base}/nursery/smoke_alarm/state")
        assert "ON" in nursery and nursery[-1] == "OFF"
        living_room = states(f"{base}/living_room/smoke_alarm/state")
        assert living_room and set(living_room) == {"OFF"}
        aggregate = states(f"{base}/smoke_alarm/state")
        assert "ON" in aggregate and aggregate[-1] == "OFF"
        attributes = [json.loads(m.payload) for m in recorder.on(f"{base}/nursery/smoke_alarm/attributes")]
        on_attributes = next(a for a in attributes if a["state"] == "ON")
        assert on_attributes["source"] == "nursery" and on_attributes["event_id"]
        quiet_attributes = json.loads(recorder.on(f"{base}/living_room/smoke_alarm/attributes")[-1].payload)
        assert quiet_attributes["source"] == "living_room" and quiet_attributes["event_id"] is None

        events = [json.loads(m.payload) for m in recorder.on(f"{base}/events")]
        assert {e["source"] for e in events if e["class"] == "smoke_alarm"} == {"nursery"}
        assert on_attributes["event_id"] in {e["id"] for e in events}
        for source in ("nursery", "living_room"):
            levels = [float(text) for text in states(f"{base}/{source}/level")]
            assert levels and all(-120.0 <= level <= 3.0 for level in levels)
        loud = max(float(text) for text in states(f"{base}/nursery/level"))
        assert loud > max(float(text) for text in states(f"{base}/living_room/level"))
    finally:
        recorder.close()


def test_per_source_states_republish_turn_off_and_removed_sources_are_cleared(
    broker: Broker, tmp_path: Path
) -> None:
    node = "moved"
    base = f"harken/{node}"
    discovery = f"homeassistant/+/{node}/+/config"
    store = EventStore(tmp_path / "harken.db")
    recorder = Recorder(broker.port, [f"{base}/#"])

    def sink_with(sources: list[str]) -> MqttSink:
        sink, _controls = _sink(store, broker.port, node)
        return MqttSink(sink.config, store, sink.controls, CLASSES, sink.device, source_names=sources)

    first, second = sink_with(["attic", "garage"]), sink_with(["attic", "cellar"])
    alarm = replace(_event(0), source="attic")
    cellar_state = f"{base}/cellar/smoke_alarm/state"

    async def scenario() -> None:
        await first.start()  # leaves retained configs and states of the garage
        await first.stop()
        await second.start()
        assert second.status()["connected"]
        await _until(
            lambda: second.status()["stale_configs_cleared"] == len(CLASSES) + 1,
            5,
            "the garage's configs to be cleared",
        )
        await hand_over(second, store, EventMessage("start", alarm))
        await asyncio.to_thread(
            recorder.wait_for,
            lambda _ms: [m.text for m in recorder.on(f"{base}/attic/smoke_alarm/state")][-1:] == ["ON"],
            5,
            "the attic's smoke alarm ON",
        )
        # Home Assistant restarts: the per-source states come again too.
        seen = len(recorder.on(cellar_state))
        await asyncio.to_thread(recorder.publish, "homeassistant/status", "online")
        await asyncio.to_thread(
            recorder.wait_for, lambda _ms: len(recorder.on(cellar_state)) > seen, 5, "states re-sent"
        )
        second.on_live(LiveUpdate(source="cellar", audio_s=1.0, scores={}, level_dbfs=-44.04))
        await second.stop()  # the attic's alarm is still open: a clean stop turns it OFF

    try:
        asyncio.run(asyncio.wait_for(scenario(), 40))
        assert [m.text for m in recorder.on(f"{base}/attic/smoke_alarm/state")][-1] == "OFF"
        assert [m.text for m in recorder.on(f"{base}/smoke_alarm/state")][-2:] == ["ON", "OFF"]
        assert set(m.text for m in recorder.on(cellar_state)) == {"OFF"}
        assert [m.text for m in recorder.on(f"{base}/cellar/level")] == ["-44.0"]
        # What a newcomer (Home Assistant after a restart) finds retained on the broker.
        late = Recorder(broker.port, [discovery, f"{base}/#"])
        try:
            late.publish(f"{base}/marker", "end")  # after the retained ones of the subscription
            late.wait_for(lambda ms: any(m.topic == f"{base}/marker" for m in ms), 5, "the marker")
            retained = {m.topic for m in late.messages if m.retain}
        finally:
            late.close()
        assert not [t for t in retained if "garage" in t]
        for source in ("attic", "cellar"):
            assert f"homeassistant/sensor/{node}/{source}-level/config" in retained
            assert f"{base}/{source}/smoke_alarm/state" in retained
        assert f"homeassistant/binary_sensor/{node}/smoke_alarm/config" in retained
        assert f"{base}/smoke_alarm/state" in retained
    finally:
        recorder.close()
        store.close()


# --------------------------------------------------------------------------- nothing lost
def test_broker_outage_loses_nothing_and_delivers_in_order(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    mosquitto, mosquitto_pub = _programs()
    # Persistence keeps the subscriber's session across the restart, so it gets every message
    # published after the restart however fast harken reconnects.
    server = Broker(tmp_path / "broker", mosquitto, mosquitto_pub, persistence=True)
    request.addfinalizer(server.stop)
    server.start()
    node = "outage"
    events_topic, availability = f"harken/{node}/events", f"harken/{node}/availability"
    recorder = Recorder(
        server.port, [events_topic, availability], client_id="outage-recorder", clean_session=False
    )

    def events_received() -> list[Any]:
        return [
            json.loads(m.payload) for m in recorder.first_deliveries() if m.topic == events_topic
        ]

    store = EventStore(tmp_path / "harken.db")
    sink, _controls = _sink(store, server.port, node)
    sent: list[EventMessage] = []

    async def scenario() -> None:
        dispatcher = Dispatcher(store, [sink])
        await dispatcher.start()
        assert sink.status()["state"] == "ok"

        async def happen(count: int) -> None:
            for index in range(count):
                event = _event(len(sent) + index, CLASSES[index % 3])
                for message in (EventMessage("start", event), EventMessage("end", _ended(event))):
                    await dispatcher.publish(message)
                    sent.append(message)
            await dispatcher.drain()

        await happen(1)
        await asyncio.to_thread(
            recorder.wait_for, lambda _ms: len(events_received()) == 2, 10, "the first event"
        )
        # Acknowledged before the outage: a resend of these by harken would be a duplicate.
        await _until(lambda: sink.status()["outbox"]["pending"] == 0, 10, "the first PUBACKs")
        server.stop()
        await _until(lambda: not sink.status()["connected"], 10, "the sink to notice the outage")
        await happen(3)  # while the broker is down
        status = sink.status()
        assert status["state"] == "degraded" and status["outbox"]["pending"] == 6
        server.start()
        await asyncio.to_thread(
            recorder.wait_for,
            lambda _ms: len(events_received()) >= len(sent),
            20,
            "every event after the reconnect",
        )
        await _until(lambda: sink.status()["outbox"]["pending"] == 0, 10, "the outbox to drain")
        await dispatcher.stop()

    try:
        asyncio.run(asyncio.wait_for(scenario(), 60))
        assert events_received() == [m.to_dict() for m in sent]  # all, in order, once from harken
        # States were re-published on the reconnect: availability went online a second time.
        assert [m.text for m in recorder.on(availability)].count("online") >= 2
        assert sink.status()["connects"] == 2
        for message in sent[1::2]:
            stored = store.get_event(message.event.id)
            assert stored is not None and {"phase": "end", **stored.to_dict()} == message.to_dict()
        assert store.outbox_counts("mqtt") == {"pending": 0, "delivered": len(sent), "failed": 0}
    finally:
        recorder.close()
        store.close()


def test_outbox_left_by_an_earlier_run_is_delivered_at_start(
    broker: Broker, tmp_path: Path
) -> None:
    node = "leftover"
    store = EventStore(tmp_path / "harken.db")
    first = _event(0)
    # An earlier run stored these and stopped before the broker acknowledged them.
    payloads = [
        EventMessage("start", first).to_dict(),
        EventMessage("end", _ended(first)).to_dict(),
    ]
    for payload in payloads:
        store.outbox_put("mqtt", payload)
    recorder = Recorder(broker.port, [f"harken/{node}/events"])
    sink, _controls = _sink(store, broker.port, node)

    async def scenario() -> None:
        await sink.start()
        await asyncio.to_thread(
            recorder.wait_for, lambda ms: len(ms) == 2, 10, "the left-over events"
        )
        await sink.stop()

    try:
        asyncio.run(asyncio.wait_for(scenario(), 30))
        assert [json.loads(m.payload) for m in recorder.messages] == payloads
        assert store.outbox_counts("mqtt")["pending"] == 0
    finally:
        recorder.close()
        store.close()


# --------------------------------------------------------------------------- last will
def test_kill_9_leaves_offline_retained(broker: Broker, tmp_path: Path) -> None:
    node = "will"
    wav = tmp_path / "t3.wav"
    sf.write(str(wav), t3_scene(), 16000, subtype="PCM_16")
    config = tmp_path / "harken.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "sources": [
                    {"name": "kitchen", "url": f"file:{wav}", "realtime": True, "loop": True}
                ],
                "store": {"path": str(tmp_path / "harken.db")},
                "api": {"enabled": False},
                "mqtt": {
                    "enabled": True,
                    "host": "127.0.0.1",
                    "port": broker.port,
                    "node_id": node,
                },
            }
        )
    )
    availability = f"harken/{node}/availability"
    recorder = Recorder(broker.port, [availability])
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARKEN_")}
    env["PYTHONPATH"] = str(REPO)
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "run", "--config", str(config)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        recorder.wait_for(
            lambda ms: any(m.text == "online" for m in ms), 30, "harken to come online"
        )
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        recorder.wait_for(lambda ms: ms[-1].text == "offline", 10, "the last will")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        recorder.close()
    late = Recorder(broker.port, [availability])  # a newcomer sees what Home Assistant would
    try:
        late.wait_for(lambda ms: bool(ms), 5, "the retained availability")
        assert late.messages[0].text == "offline" and late.messages[0].retain
    finally:
        late.close()


# --------------------------------------------------------------------------- credentials
def test_credentials_accepted_and_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest
) -> None:
    mosquitto, mosquitto_pub = _programs()
    passwd = require_program("mosquitto_passwd")
    password_file = tmp_path / "passwd"
    subprocess.run(
        [passwd, "-b", "-c", str(password_file), "harken", "s3cret-pass"],
        check=True,
        capture_output=True,
        timeout=10,
    )
    server = Broker(
        tmp_path / "broker",
        mosquitto,
        mosquitto_pub,
        password_file=password_file,
        credentials=("harken", "s3cret-pass"),
    )
    request.addfinalizer(server.stop)
    server.start()
    good_store = EventStore(tmp_path / "good.db")
    bad_store = EventStore(tmp_path / "bad.db")
    good, _ = _sink(good_store, server.port, "authok", username="harken", password="s3cret-pass")
    bad, _ = _sink(
        bad_store, server.port, "authbad", username="harken", password="wrong", reconnect_max_s=30.0
    )
    caplog.set_level(logging.INFO, logger="service.sinks.mqtt")

    async def scenario() -> None:
        await good.start()
        assert good.status()["state"] == "ok" and good.status()["connected"]
        await bad.start()
        status = bad.status()
        assert status["state"] == "degraded" and not status["connected"]
        assert "refused the credentials" in status["error"] and "mqtt.password" in status["error"]
        await hand_over(bad, bad.store, EventMessage("start", _event(0)))  # kept for when the password is fixed
        await asyncio.sleep(1.5)
        # No crash loop: after refused credentials the next try waits reconnect_max_s.
        assert bad.status()["attempts"] == 1
        await good.stop()
        await bad.stop()

    try:
        asyncio.run(asyncio.wait_for(scenario(), 30))
        assert bad_store.outbox_counts("mqtt")["pending"] == 1
        refusals = [r for r in caplog.records if "refused the credentials" in r.getMessage()]
        assert len(refusals) == 1 and refusals[0].levelno == logging.ERROR
    finally:
        good_store.close()
        bad_store.close()


# --------------------------------------------------------------------------- commands
def test_commands_change_controls_and_garbage_is_ignored(broker: Broker, tmp_path: Path) -> None:
    node = "cmd"
    base = f"harken/{node}"
    store = EventStore(tmp_path / "harken.db")
    sink, controls = _sink(store, broker.port, node, level_interval_s=0.01)
    recorder = Recorder(broker.port, [f"{base}/#", f"homeassistant/+/{node}/+/config"])

    async def send(topic: str, payload: bytes | str) -> None:
        await asyncio.to_thread(recorder.publish, topic, payload)

    async def scenario() -> None:
        await sink.start()
        await send(f"{base}/smoke_alarm/enabled/set", "OFF")
        await _until(lambda: not controls.get("smoke_alarm").enabled, 5, "enable OFF")
        await send(f"{base}/smoke_alarm/sensitivity/set", "0.8")
        await _until(lambda: controls.get("smoke_alarm").sensitivity == 0.8, 5, "sensitivity 0.8")
        await send(f"{base}/smoke_alarm/snooze/set", "PRESS")
        await _until(lambda: controls.get("smoke_alarm").snoozed(), 5, "snooze")
        until = controls.get("smoke_alarm").snoozed_until
        assert until is not None and abs(until - utc_now() - timedelta(minutes=10)) < timedelta(
            seconds=30
        )
        await send(f"{base}/smoke_alarm/snooze/set", "CANCEL")
        await _until(lambda: not controls.get("smoke_alarm").snoozed(), 5, "snooze cancelled")
        before = controls.get("smoke_alarm")

        garbage: list[tuple[str, bytes | str]] = [
            (f"{base}/smoke_alarm/enabled/set", "maybe"),
            (f"{base}/smoke_alarm/enabled/set", b"\xff\xfe\x00"),
            (f"{base}/smoke_alarm/sensitivity/set", "abc"),
            (f"{base}/smoke_alarm/sensitivity/set", "1.5"),
            (f"{base}/smoke_alarm/sensitivity/set", "nan"),
            (f"{base}/smoke_alarm/sensitivity/set", "9" * 5000),
            (f"{base}/smoke_alarm/snooze/set", "-3"),
            (f"{base}/smoke_alarm/snooze/set", "99999999"),
            (f"{base}/smoke_alarm/snooze/set", ""),
            (f"{base}/dog_bark/enabled/set", "ON"),
            (f"{base}/smoke_alarm/volume/set", "1"),
        ]
        for topic, payload in garbage:
            await send(topic, payload)
        # A valid command after the garbage: once it is applied, all the garbage was handled.
        await send(f"{base}/baby_cry/enabled/set", "off")
        await _until(
            lambda: not controls.get("baby_cry").enabled, 5, "the command after the garbage"
        )
        assert controls.get("smoke_alarm") == before
        status = sink.status()
        assert status["commands_ignored"] == len(garbage) and status["commands_applied"] == 5
        assert status["connected"]

        # Home Assistant restarts: discovery and states are sent again.
        discovery = f"homeassistant/binary_sensor/{node}/smoke_alarm/config"
        seen = len(recorder.on(discovery))
        await send("homeassistant/status", "online")
        await asyncio.to_thread(
            recorder.wait_for,
            lambda ms: len(recorder.on(discovery)) > seen,
            5,
            "discovery re-sent after Home Assistant's online",
        )
        sink.on_live(LiveUpdate(source="test", audio_s=1.0, scores={}, level_dbfs=-31.26))
        await sink.stop()

    try:
        asyncio.run(asyncio.wait_for(scenario(), 40))
        assert recorder.on(f"{base}/smoke_alarm/enabled")[-1].text == "OFF"
        assert recorder.on(f"{base}/smoke_alarm/sensitivity")[-1].text == "0.8"
        assert recorder.on(f"{base}/baby_cry/enabled")[-1].text == "OFF"
        assert [m.text for m in recorder.on(f"{base}/level")] == ["-31.3"]
        assert recorder.on(f"{base}/availability")[-1].text == "offline"
    finally:
        recorder.close()
        store.close()


# --------------------------------------------------------------------------- configuration errors
def test_unusable_tls_files_give_a_clear_degraded_status(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "harken.db")
    sink, _ = _sink(
        store, 1883, "tls", tls={"enabled": True, "ca_file": str(tmp_path / "missing.pem")}
    )

    async def scenario() -> None:
        await sink.start()
        status = sink.status()
        assert status["state"] == "degraded" and not status["connected"]
        assert status["error"] == f"mqtt.tls.ca_file: {tmp_path / 'missing.pem'}: no such file"
        await hand_over(sink, sink.store, EventMessage("start", _event(0)))  # kept in the outbox meanwhile
        await sink.stop()

    try:
        asyncio.run(asyncio.wait_for(scenario(), 10))
        assert store.outbox_counts("mqtt")["pending"] == 1
    finally:
        store.close()
