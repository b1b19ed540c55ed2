"""Fault injection against the real `harken run` process, a real Mosquitto and real HTTP.

Each test drives harken's audio through stdin (or live sources), so events happen exactly
between the faults: Mosquitto killed with SIGKILL and restarted, harken itself killed
with SIGKILL mid-event and mid-delivery, a full disk, SIGTERM under load. What must hold:
every event reaches its subscribers exactly as stored, in order (QoS 1 and webhooks are
at least once: a message in flight at the moment of a kill may come twice, but none is
missing),
the store stays consistent, and harken neither crashes nor loops.
"""

from __future__ import annotations

import contextlib
import getpass
import itertools
import json
import os
import signal
import struct
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from service.sinks.mqtt import OUTBOX_WINDOW
from service.sinks.store import EventStore
from tests.conftest import require_program
from tests.harken_process import Harken, Store, alarm_segment, pcm16, quiet, wait_until
from tests.mqtt_helpers import Broker, Recorder, free_port
from tests.test_webhooks import Receiver
from tests.virtual_mic import VirtualMic

pytestmark = pytest.mark.integration

CLASSES = ("baby_cry", "smoke_alarm", "glass_break")
TOKEN = "fault-test-token"
FAST_MQTT = {"reconnect_min_s": 0.1, "reconnect_max_s": 0.5}
FAST_WEBHOOK = {"retry_base_s": 0.05, "retry_max_s": 0.3, "retry_jitter": 0.0, "timeout_s": 2.0}


def persistent_broker(workdir: Path) -> Broker:
    """A broker that saves its sessions every second, so that a subscriber's queue survives
    a SIGKILL of the broker (as a production broker with persistence would)."""
    conf = "\n".join([
        "listener PORT 127.0.0.1",
        "allow_anonymous true",
        f"user {getpass.getuser()}",
        "persistence true",
        f"persistence_location {workdir}/",
        "autosave_interval 1",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
    ]) + "\n"
    return Broker(
        workdir, require_program("mosquitto"), require_program("mosquitto_pub"), conf_text=conf
    )


def kill9(broker: Broker) -> None:
    assert broker.process is not None
    broker.process.kill()
    broker.process.wait(10)
    broker.process = None


def mqtt_config(broker: Broker, node: str) -> dict[str, Any]:
    return {"enabled": True, "host": "127.0.0.1", "port": broker.port, "node_id": node, **FAST_MQTT}


def payloads(recorder: Recorder, topic: str) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in recorder.first_deliveries() if m.topic == topic]


def without_repeats(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """First deliveries in order, and how many repeats (at-least-once re-sends) were dropped."""
    seen: set[tuple[str, str]] = set()
    unique = []
    for message in messages:
        key = (message["id"], message["phase"])
        if key not in seen:
            seen.add(key)
            unique.append(message)
    return unique, len(messages) - len(unique)


@pytest.fixture
def cleanup() -> Iterator[list[Any]]:
    """Things with cleanup() or stop()/close() that must not outlive the test."""
    items: list[Any] = []
    yield items
    for item in reversed(items):
        for method in ("cleanup", "close", "stop"):
            if hasattr(item, method):
                with contextlib.suppress(Exception):  # cleaning up after a failure must not hide it
                    getattr(item, method)()
                break


# --------------------------------------------------------------------------- MQTT broker crashes
def test_mosquitto_killed_three_times_during_a_stream_loses_nothing(tmp_path: Path, cleanup: list[Any]) -> None:
    broker = persistent_broker(tmp_path / "broker")
    cleanup.append(broker)
    broker.start()
    node = "crashy"
    events_topic = f"harken/{node}/events"
    recorder = Recorder(broker.port, [events_topic], client_id="crash-recorder", clean_session=False)
    cleanup.append(recorder)
    time.sleep(1.5)  # the broker's autosave has the subscriber's session from now on
    harken = Harken(tmp_path / "harken", {
        "sources": [{"name": "hall", "url": "-"}],
        "store": {"path": str(tmp_path / "harken" / "harken.db")},
        "api": {"enabled": False},
        "mqtt": mqtt_config(broker, node),
    }, stdin=True).start()
    cleanup.append(harken)
    store = harken.store
    harken.wait_log("MQTT connected")

    fed = 0

    def event_happens() -> None:
        nonlocal fed
        harken.feed(alarm_segment(seed=fed))
        fed += 1
        wait_until(lambda: store.ended() == fed, 30, f"event {fed} to be stored")

    def subscriber_has_what_the_broker_acknowledged() -> None:
        # A broker killed while the subscriber is away loses the queue it holds for it
        # (whatever came since its last autosave): that would be Mosquitto's loss, not harken's.
        def caught_up() -> bool:
            acknowledged = store.query("SELECT COUNT(*) FROM outbox WHERE sink = 'mqtt' AND delivered_at IS NOT NULL")
            return len(without_repeats(payloads(recorder, events_topic))[0]) >= acknowledged[0][0]

        # Nothing may be in flight either: an event's end message acknowledged after the
        # check and before the kill would be lost by the broker, not by harken (this raced).
        wait_until(lambda: store.pending("mqtt") == 0, 20, "harken's outbox to be acknowledged")
        wait_until(caught_up, 20, "the subscriber to have every acknowledged message")

    event_happens()
    wait_until(lambda: store.pending("mqtt") == 0, 10, "the first event's PUBACKs")
    for crash in range(3):
        subscriber_has_what_the_broker_acknowledged()
        kill9(broker)
        event_happens()  # while the broker is dead: into the outbox
        assert store.pending("mqtt") > 0
        broker.start()
        event_happens()  # while harken reconnects and delivers
        harken.wait_log("MQTT connected to .* again", count=crash + 1)
    wait_until(lambda: store.pending("mqtt") == 0, 30, "the outbox to drain after the last restart")
    outbox = store.outbox("mqtt")
    assert len(outbox) == 2 * len(store.events()) >= 14
    wait_until(lambda: len(without_repeats(payloads(recorder, events_topic))[0]) >= len(outbox), 20,
               "every event at the subscriber")
    harken.close_stdin()  # the stream ends; with the API off harken then stops
    assert harken.wait_exit(30) == 0, harken.log()[-3000:]

    received, repeats = without_repeats(payloads(recorder, events_topic))
    assert received == outbox  # exactly as stored, in order
    assert repeats <= 3 * OUTBOX_WINDOW  # only what was in flight at a crash may come again
    stored = {event["id"]: event for event in store.events()}
    assert all(event["end_s"] is not None for event in stored.values())
    assert sorted((m["id"], m["phase"]) for m in received) == sorted(
        (event_id, phase) for event_id in stored for phase in ("start", "end"))
    for message in (m for m in received if m["phase"] == "end"):
        # The end message left before the clip was written: only the clip path differs.
        assert {**message, "clip_path": None} == {"phase": "end", **stored[message["id"]], "clip_path": None}

    # States are right afterwards: a newcomer (Home Assistant after a restart) sees every
    # class OFF and harken offline, from retained messages.
    late = Recorder(broker.port, [f"harken/{node}/+/state", f"harken/{node}/availability"])
    cleanup.append(late)
    late.wait_for(lambda ms: len(ms) >= len(CLASSES) + 1, 10, "the retained states")
    states = {m.topic.split("/")[2]: m.text for m in late.messages}
    assert states == {**dict.fromkeys(CLASSES, "OFF"), "availability": "offline"}


# --------------------------------------------------------------------------- harken crashes
def test_kill_9_mid_event_and_mid_delivery_then_restart(tmp_path: Path, cleanup: list[Any]) -> None:
    """harken dies by SIGKILL with one event open, the broker away (MQTT outbox pending) and
    a webhook request in flight; the restarted harken closes the event, announces its end and
    delivers everything that was recorded."""
    broker = persistent_broker(tmp_path / "broker")  # not started yet: the broker is down
    cleanup.append(broker)
    gate = threading.Event()  # the receiver holds every request until the gate opens
    receiver = Receiver(gate=gate).start()
    cleanup.append(receiver)
    node = "phoenix"
    events_topic = f"harken/{node}/events"
    config = {
        "sources": [{"name": "hall", "url": "-"}],
        "store": {"path": str(tmp_path / "harken" / "harken.db")},
        "api": {"enabled": False},
        "mqtt": mqtt_config(broker, node),
        "webhooks": [{"name": "phone", "url": receiver.url(), "on": ["start", "end"], "secret": "whsec-kill9",
                      **FAST_WEBHOOK}],
    }
    harken = Harken(tmp_path / "harken", config, stdin=True).start()
    cleanup.append(harken)
    store = harken.store
    harken.wait_log("harken started")
    harken.feed(alarm_segment(seed=0))  # a complete event
    harken.feed(alarm_segment(seed=1)[: 6 * 16000])  # the next one starts and is still sounding
    wait_until(lambda: len(store.events()) >= 2 and store.ended() == 1, 30, "one closed and one open event")
    wait_until(receiver.received, 10, "a webhook request in flight")
    harken.kill9()

    # What the crash left: a consistent file, the open event, every notification pending.
    assert store.integrity() == "ok"
    events = store.events()
    open_events = [e for e in events if e["end_s"] is None]
    assert len(open_events) == 1 and open_events[0]["class"] == "smoke_alarm"
    assert store.pending("mqtt") == len(store.outbox("mqtt")) == 2 * len(events) - 1
    assert store.pending("webhook:phone") == len(store.outbox("webhook:phone")) == 2 * len(events) - 1

    broker.start()
    recorder = Recorder(broker.port, [events_topic])
    cleanup.append(recorder)
    receiver.gate = None
    gate.set()
    harken.start()  # the same config and store: a service manager restarting it
    harken.wait_log("harken started")
    expected = 2 * len(events)
    wait_until(lambda: store.pending("mqtt") == 0 and len(store.outbox("mqtt")) == expected, 30,
               "the MQTT outbox to drain, the closing end included")
    wait_until(lambda: store.pending("webhook:phone") == 0, 30, "the webhook outbox to drain")
    recorder.wait_for(lambda ms: len(ms) >= expected, 10, "every event message at the subscriber")
    code, _elapsed = harken.terminate()
    assert code == 0, harken.log()[-3000:]

    closed = {e["id"]: e for e in store.events()}[open_events[0]["id"]]
    assert closed["extra"]["closed_by"] == "restart"
    # Closed at the last moment known for sure: its detection (later audio died with harken).
    assert closed["end_s"] == closed["detected_s"] and closed["ended_at"] == closed["detected_at"]
    assert "closing event" in harken.log(this_run=True) and "left open by an earlier run" in harken.log()

    received, repeats = without_repeats(payloads(recorder, events_topic))
    assert received == store.outbox("mqtt") and repeats == 0
    assert received[-1] == {"phase": "end", **closed, "clip_path": None}

    # Webhooks: every notification delivered; only the one in flight at the kill may come twice.
    keys = [r.headers["idempotency-key"] for r in receiver.received()]
    wanted = [f"{p['event_id']}-{p['phase']}" for p in store.outbox("webhook:phone")]
    assert list(dict.fromkeys(keys)) == wanted
    assert all(keys.count(key) == 1 for key in wanted[1:])
    assert len(store.events()) == len(events)  # nothing recorded was lost


# --------------------------------------------------------------------------- sources that vanish
class LiveStream:
    """An endless WAV over HTTP at real-time pace, like a camera's audio: what ffmpeg reads."""

    def __init__(self) -> None:
        self.clients = 0
        stream = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stream.clients += 1
                self.send_response(200)
                self.send_header("Content-Type", "audio/wav")
                self.end_headers()
                header = sf_header()
                noise = pcm16(quiet(1.0, seed=stream.clients))
                try:
                    self.wfile.write(header)
                    started = time.monotonic()
                    for second in itertools.count():
                        self.wfile.write(noise)
                        self.wfile.flush()
                        time.sleep(max(0.0, started + second + 1 - time.monotonic()))
                except OSError:
                    pass  # the reader (ffmpeg) went away

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/live.wav"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def sf_header() -> bytes:
    """A 16 kHz mono 16-bit WAV header declaring the largest length a WAV can (a live stream)."""
    data_bytes = 0xFFFFFFFF - 36
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000,
            32000, 2, 16) + b"data" + struct.pack("<I", data_bytes))


def children_named(pid: int, name: str) -> list[int]:
    """Child processes of `pid` with this command name (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)
            comm = fields[0].split("(", 1)[1]
            ppid = int(fields[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and comm == name:
            found.append(int(stat.parent.name))
    return found


def test_microphone_and_stream_vanish_and_come_back(tmp_path: Path, cleanup: list[Any]) -> None:
    """The microphone's PulseAudio server stops and restarts, the camera stream's ffmpeg is
    killed: each recovers with backoff, is degraded meanwhile, and the third source never notices."""
    require_program("pulseaudio")
    require_program("pactl")
    require_program("ffmpeg")
    mic = VirtualMic(tmp_path / "vmic")
    cleanup.append(mic)
    mic.start()
    stream = LiveStream()
    cleanup.append(stream)
    hall = tmp_path / "hall.wav"
    soundfile.write(str(hall), quiet(5.0, seed=9), 16000, subtype="PCM_16")
    port = free_port()
    harken = Harken(tmp_path / "harken", {
        "sources": [
            {"name": "nursery", "url": "mic"},
            {"name": "camera", "url": f"url:{stream.url}"},
            {"name": "hall", "url": f"file:{hall}", "realtime": True, "loop": True},
        ],
        "store": {"path": str(tmp_path / "harken" / "harken.db")},
        "api": {"port": port, "token": TOKEN},
    }, env={"PULSE_SERVER": mic.env["PULSE_SERVER"]}).start()
    cleanup.append(harken)
    harken.wait_api()

    seen: dict[str, list[str]] = {"nursery": [], "camera": [], "hall": []}
    hall_audio: list[float] = []

    def sources() -> dict[str, dict[str, Any]]:
        response = harken.get("/api/status", TOKEN)
        assert response.status_code == 200, response.text
        current = {s["name"]: s for s in response.json()["sources"]}
        for name, source in current.items():
            seen[name].append(source["state"])
        hall_audio.append(current["hall"]["audio_s"])
        return current

    wait_until(lambda: all(s["state"] == "running" for s in sources().values()), 30, "every source running")

    # The camera's ffmpeg dies: the stream is re-opened after a back-off of 1 s.
    (ffmpeg,) = wait_until(lambda: children_named(harken.process.pid, "ffmpeg"), 10, "the ffmpeg child")
    os.kill(ffmpeg, signal.SIGKILL)
    wait_until(lambda: sources()["camera"]["restarts"] >= 1 and sources()["camera"]["state"] == "running", 30,
               "the camera stream back")
    assert stream.clients >= 2

    # The microphone's sound server goes away (an unplugged USB microphone looks the same).
    mic.stop()
    degraded = wait_until(lambda: sources()["nursery"]["state"] == "degraded" and sources()["nursery"], 30,
                          "the microphone to be reported degraded")
    assert degraded["error"]
    time.sleep(2.0)  # it stays away for a while: retries back off, nothing crashes
    assert sources()["nursery"]["state"] == "degraded"
    mic.start()
    back = wait_until(lambda: sources()["nursery"]["state"] == "running" and sources()["nursery"], 40,
                      "the microphone back")
    assert back["restarts"] >= 1

    assert "degraded" in seen["camera"] and "degraded" in seen["nursery"]
    # The third source never noticed: always running, its audio clock always advancing.
    assert set(seen["hall"]) == {"running"}
    assert hall_audio == sorted(hall_audio) and hall_audio[-1] > hall_audio[0] + 3.0
    log = harken.log()
    assert "source camera: ffmpeg could not decode" in log and "retrying in 1 s" in log
    assert "source nursery:" in log and "retrying in 2 s" in log  # the back-off grows while the mic is away
    code, _elapsed = harken.terminate()
    assert code == 0, log[-3000:]


# --------------------------------------------------------------------------- the disk fills up
@pytest.fixture
def broker(tmp_path: Path, cleanup: list[Any]) -> Broker:
    server = Broker(tmp_path / "broker", require_program("mosquitto"), require_program("mosquitto_pub"))
    cleanup.append(server)
    server.start()
    return server


def smoke_messages(recorder: Recorder, topic: str) -> set[tuple[str, str]]:
    return {(m["id"], m["phase"]) for m in payloads(recorder, topic) if m["class"] == "smoke_alarm"}


def test_disk_full_degrades_the_store_while_detection_and_mqtt_go_on(
    tmp_path: Path, broker: Broker, cleanup: list[Any]
) -> None:
    """The store's disk fills up while harken runs. A tmpfs or loop device cannot be mounted
    here and root ignores file permissions, so the disk is filled the way the kernel reports
    it to one process: RLIMIT_FSIZE makes every write past 160 kB fail (EFBIG), which SQLite
    and the clip writer see exactly as they would see a full disk."""
    node = "diskfull"
    events_topic = f"harken/{node}/events"
    db = tmp_path / "harken" / "harken.db"
    EventStore(db).close()  # the store exists, ~40 kB: the first events still fit
    recorder = Recorder(broker.port, [events_topic])
    cleanup.append(recorder)
    port = free_port()
    harken = Harken(tmp_path / "harken", {
        "sources": [{"name": "hall", "url": "-"}],
        "store": {"path": str(db)},
        "api": {"port": port, "token": TOKEN},
        "mqtt": mqtt_config(broker, node),
    }, stdin=True, file_size_limit=160 * 1024).start()
    cleanup.append(harken)
    harken.wait_api()
    segments = 6
    for index in range(segments):
        harken.feed(alarm_segment(seed=index))
        # Every event reaches MQTT: through the outbox while it is writable, directly after.
        wait_until(lambda n=index + 1: len(smoke_messages(recorder, events_topic)) >= 2 * n, 30,
                   f"event {index + 1} at the MQTT subscriber")
    status = harken.get("/api/status", TOKEN).json()
    store_status = status["sinks"]["store"]
    assert store_status["state"] == "degraded" and store_status["write_errors"] > 0
    assert "disk I/O error" in store_status["error"] or "full" in store_status["error"]
    assert status["sources"][0]["state"] == "running"
    assert status["sinks"]["mqtt"]["connected"]
    # Some events were stored before the disk filled, not all: the fault really happened.
    stored = {e["id"] for e in Store(db).events() if e["class"] == "smoke_alarm"}
    announced = {event_id for event_id, _phase in smoke_messages(recorder, events_topic)}
    assert 1 <= len(stored) < segments and stored < announced and len(announced) == segments
    # The API keeps answering from what is stored.
    assert harken.get("/api/events", TOKEN).status_code == 200
    harken.check_alive()
    code, _elapsed = harken.terminate()
    log = harken.log()
    assert code == 0, log[-3000:]
    assert "not stored" in log and "Traceback" not in log
    assert log.count("MQTT outbox unusable") <= 3  # waits between tries: no busy loop


def test_a_store_that_cannot_be_opened_runs_in_memory_degraded(
    tmp_path: Path, broker: Broker, cleanup: list[Any]
) -> None:
    """No crash loop under a service manager: harken starts on a store in memory, says why
    in the log and the status, and detection and MQTT work as before."""
    node = "nostore"
    events_topic = f"harken/{node}/events"
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the store's directory should be")
    recorder = Recorder(broker.port, [events_topic])
    cleanup.append(recorder)
    port = free_port()
    harken = Harken(tmp_path / "harken", {
        "sources": [{"name": "hall", "url": "-"}],
        "store": {"path": str(blocker / "harken.db")},
        "api": {"port": port, "token": TOKEN},
        "mqtt": mqtt_config(broker, node),
    }, stdin=True).start()
    cleanup.append(harken)
    harken.wait_api()
    harken.feed(alarm_segment(seed=0))
    wait_until(lambda: len(smoke_messages(recorder, events_topic)) >= 2, 30, "the event at the subscriber")
    store_status = harken.get("/api/status", TOKEN).json()["sinks"]["store"]
    assert store_status["state"] == "degraded"
    assert f"cannot open event store {blocker / 'harken.db'}" in store_status["error"]
    assert "in memory only" in store_status["error"]
    events = harken.get("/api/events", TOKEN).json()["events"]
    assert [e["class"] for e in events].count("smoke_alarm") == 1
    code, _elapsed = harken.terminate()
    assert code == 0, harken.log()[-3000:]
    assert "in memory only" in harken.log()


# --------------------------------------------------------------------------- SIGTERM under load
#: What the daemon's own stop budget adds up to (sources 3 s, sinks' drain and stop, the API's
#: graceful close), with room for a slow shared machine. Not a speed claim: a hang fails it.
SHUTDOWN_BOUND_S = 20.0


def test_sigterm_under_heavy_load_stops_in_bounds_and_loses_nothing(
    tmp_path: Path, broker: Broker, cleanup: list[Any]
) -> None:
    node = "busy"
    events_topic = f"harken/{node}/events"

    def slow_phone(_request: Any, _index: int) -> tuple[int, dict[str, str], bytes]:
        time.sleep(0.2)  # a slow receiver: notifications queue up in the outbox under load
        return 200, {}, b"{}"

    receiver = Receiver(script=slow_phone).start()
    cleanup.append(receiver)
    recorder = Recorder(broker.port, [events_topic, f"harken/{node}/availability"])
    cleanup.append(recorder)
    scene = tmp_path / "scene.wav"
    soundfile.write(str(scene), np.concatenate([alarm_segment(seed) for seed in range(3)]), 16000, subtype="PCM_16")
    port = free_port()
    db = tmp_path / "harken" / "harken.db"
    config: dict[str, Any] = {
        # Three rooms played as fast as the CPU allows, forever: events every fraction of a second.
        "sources": [{"name": f"room{i}", "url": f"file:{scene}", "realtime": False, "loop": True} for i in range(3)],
        "store": {"path": str(db)},
        "api": {"port": port, "token": TOKEN},
        "mqtt": mqtt_config(broker, node),
        "webhooks": [{"name": "phone", "url": receiver.url(), "on": ["start", "end"], **FAST_WEBHOOK}],
    }
    harken = Harken(tmp_path / "harken", config).start()
    cleanup.append(harken)
    harken.wait_api()
    store = harken.store

    stop_clients = threading.Event()

    def api_client() -> None:  # dashboard-like readers on top of the audio load
        while not stop_clients.is_set():
            try:
                harken.get("/api/events?limit=100", TOKEN)
                harken.get("/api/status", TOKEN)
            except Exception:
                pass  # refused while shutting down: expected
            time.sleep(0.02)

    clients = [threading.Thread(target=api_client, daemon=True) for _ in range(3)]
    for client in clients:
        client.start()
    try:
        wait_until(lambda: store.ended() >= 24, 60, "two dozen events under load")
        code, elapsed_s = harken.terminate(timeout_s=60)
    finally:
        stop_clients.set()
        for client in clients:
            client.join(5)
    log = harken.log()
    assert code == 0, log[-3000:]
    assert elapsed_s < SHUTDOWN_BOUND_S, f"shutdown took {elapsed_s:.1f} s"
    recorder.wait_for(lambda ms: ms and ms[-1].text == "offline", 10, "availability offline")

    # Nothing lost: every stored event is closed and has both notifications per sink, either
    # delivered (and then received, in order, as stored) or pending for the next start.
    events = store.events()
    assert all(event["end_s"] is not None for event in events)
    for sink in ("mqtt", "webhook:phone"):
        entries = store.outbox(sink)
        assert len(entries) == 2 * len(events), sink
    delivered = [json.loads(row[0]) for row in store.query(
        "SELECT payload FROM outbox WHERE sink = 'mqtt' AND delivered_at IS NOT NULL ORDER BY seq")]
    received, _repeats = without_repeats(payloads(recorder, events_topic))
    assert received[: len(delivered)] == delivered

    assert store.pending("webhook:phone") > 0  # the stop came with notifications queued

    # A restart delivers whatever was still pending.
    harken.config = {**config, "sources": [{"name": "quiet", "url": f"file:{scene}", "realtime": True}],
                     "classes": {"smoke_alarm": {"enabled": False}}}
    harken.start()
    harken.wait_api()
    wait_until(lambda: store.pending("mqtt") == 0 and store.pending("webhook:phone") == 0, 30,
               "the outboxes to drain after the restart")
    recorder.wait_for(lambda _ms: len(without_repeats(payloads(recorder, events_topic))[0]) >= 2 * len(events),
                      15, "every event message")
    received, _repeats = without_repeats(payloads(recorder, events_topic))
    assert received[: 2 * len(events)] == store.outbox("mqtt")[: 2 * len(events)]
    keys = {r.headers["idempotency-key"] for r in receiver.received()}
    assert {f"{p['event_id']}-{p['phase']}" for p in store.outbox("webhook:phone")} <= keys
    code, _elapsed = harken.terminate()
    assert code == 0
