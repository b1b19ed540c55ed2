"""Webhook delivery against a real local HTTP server started by each test.

Retry settings are shrunk (tens of milliseconds) so outages and retries play out in a
second or two; every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from service.cli import main
from service.config import Settings, SourceConfig, WebhookConfig
from service.events import EventMessage, EventRecord
from service.sinks.dispatcher import Dispatcher
from service.sinks.store import EventStore
from service.sinks.webhooks import WebhookSink
from tests.conftest import hand_over

FAST = {"retry_base_s": 0.05, "retry_max_s": 0.2, "timeout_s": 2.0}
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)

# ---------------------------------------------------------------- the receiver

Reply = tuple[int, dict[str, str], bytes]


@dataclass
class Request:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float  # monotonic arrival time

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A real HTTP server in a thread; records every POST, answers from `script`."""

    port: int = 0
    script: Callable[[Request, int], Reply] | None = None  # (request, index) -> reply
    gate: threading.Event | None = None  # when set up, each request waits for it (slow receiver)
    requests: list[Request] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                request = Request(
                    self.path, {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length), time.monotonic(),
                )
                with receiver._lock:
                    index = len(receiver.requests)
                    receiver.requests.append(request)
                if receiver.gate is not None:
                    receiver.gate.wait(10)
                reply = receiver.script or (lambda _request, _index: (200, {}, b'{"ok":true}'))
                status, headers, body = reply(request, index)
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            if self.gate is not None:
                self.gate.set()
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def received(self) -> list[Request]:
        with self._lock:
            return list(self.requests)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # httpx honours proxy variables; the receiver is on loopback.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


# ---------------------------------------------------------------- helpers


def run(coro: Awaitable[Any], timeout_s: float = 20.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout_s))  # type: ignore[arg-type]


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or predicate}")
        await asyncio.sleep(0.01)


def event(n: int, class_name: str = "smoke_alarm", source: str = "kitchen") -> EventRecord:
    at = T0 + timedelta(minutes=n)
    return EventRecord(
        id=f"ev{n:04d}", source=source, class_name=class_name, start_s=60.0 * n,
        detected_s=60.0 * n + 0.3, started_at=at, detected_at=at, score=0.9,
        model_version="t", level_dbfs=-20.0,
    )


def start(n: int, class_name: str = "smoke_alarm") -> EventMessage:
    return EventMessage("start", event(n, class_name))


def end(n: int, class_name: str = "smoke_alarm") -> EventMessage:
    record = event(n, class_name)
    return EventMessage("end", record.ended(
        end_s=record.start_s + 5, ended_at=record.started_at + timedelta(seconds=5),
        peak_score=0.95, mean_score=0.8, flicker=0,
    ))


def target(url: str, **values: Any) -> WebhookConfig:
    return WebhookConfig(url=url, **{**FAST, **values})


class Recorder:
    """A second, instant sink: proves other sinks are not held up by a slow webhook."""

    name = "recorder"

    def __init__(self) -> None:
        self.messages: list[EventMessage] = []

    async def handle(self, message: EventMessage) -> None:
        self.messages.append(message)


def delivery_ids(requests: list[Request]) -> list[str]:
    return [r.headers["idempotency-key"] for r in requests]


# ---------------------------------------------------------------- tests


def test_each_format_body_and_headers(tmp_path: Path, receiver: Receiver) -> None:
    store = EventStore(tmp_path / "h.db")
    sinks = [
        WebhookSink(target(receiver.url("/generic"), name="generic", secret="s3cret",
                           on=["start", "end"], headers={"X-Custom": "yes"}), 0, store),
        WebhookSink(target(receiver.url("/ntfy/house"), format="ntfy", classes=["smoke_alarm"],
                           message={"smoke_alarm": "Smoke alarm in {source}!"},
                           headers={"Authorization": "Bearer tk_test"}), 1, store),
        WebhookSink(target(receiver.url("/gotify/message?token=abc"), format="gotify"), 2, store),
        WebhookSink(target(receiver.url("/api/webhook/harken"), format="homeassistant"), 3, store),
    ]
    assert [s.name for s in sinks] == ["webhook:generic", "webhook:1", "webhook:2", "webhook:3"]

    async def scenario() -> dict[str, Any]:
        dispatcher = Dispatcher(store, sinks)
        await dispatcher.start()
        await dispatcher.publish(start(1))
        await dispatcher.publish(start(2, "baby_cry"))  # not for the ntfy target
        await dispatcher.publish(end(1))  # only the generic target wants ends
        await wait_until(lambda: len(receiver.received()) == 8, what="8 requests")
        await wait_until(lambda: all(s.status()["outbox"]["pending"] == 0 for s in sinks))
        status = dispatcher.status()
        await dispatcher.stop()
        return status

    status = run(scenario())
    by_path: dict[str, list[Request]] = {}
    for request in receiver.received():
        by_path.setdefault(request.path, []).append(request)
    assert {p: len(r) for p, r in by_path.items()} == {
        "/generic": 3, "/ntfy/": 1, "/gotify/message?token=abc": 2, "/api/webhook/harken": 2,
    }

    generic = by_path["/generic"]
    assert delivery_ids(generic) == ["ev0001-start", "ev0002-start", "ev0001-end"]
    first = generic[0]
    body = first.json()
    assert body["id"] == "ev0001" and body["class"] == "smoke_alarm" and body["phase"] == "start"
    assert body["delivery_id"] == "ev0001-start" and body["source"] == "kitchen"
    assert body["started_at"] == "2024-05-01T12:01:00.000Z"
    assert first.headers["content-type"] == "application/json"
    assert first.headers["x-harken-delivery"] == "ev0001-start"
    assert first.headers["x-harken-event"] == "start" and first.headers["x-custom"] == "yes"
    assert first.headers["user-agent"].startswith("harken/")
    for request in generic:  # the receiver's check, written independently of harken's code
        digest = hmac.new(b"s3cret", request.body, hashlib.sha256).hexdigest()
        assert request.headers["x-harken-signature"] == f"sha256={digest}"
    assert generic[2].json()["phase"] == "end" and generic[2].json()["duration_s"] == 5.0

    (ntfy,) = by_path["/ntfy/"]  # JSON publishing goes to the server root
    body = ntfy.json()
    assert body["topic"] == "house" and body["message"] == "Smoke alarm in kitchen!"
    assert body["title"] == "Smoke alarm" and body["priority"] == 5
    assert "rotating_light" in body["tags"]
    assert ntfy.headers["authorization"] == "Bearer tk_test"
    assert "x-harken-signature" not in ntfy.headers  # no secret, no signature

    gotify = [r.json() for r in by_path["/gotify/message?token=abc"]]
    assert [g["priority"] for g in gotify] == [10, 8]
    assert gotify[1]["title"] == "Baby crying"
    assert gotify[1]["extras"]["harken::event"]["id"] == "ev0002"

    ha = by_path["/api/webhook/harken"][0].json()
    assert ha["class"] == "smoke_alarm" and ha["source"] == "kitchen" and ha["message"]

    assert status["webhook:generic"]["outbox"] == {"pending": 0, "delivered": 3, "failed": 0}
    assert status["webhook:2"]["url"] == f"http://127.0.0.1:{receiver.port}/gotify/message?…"
    assert status["webhook:1"]["state"] == "idle" and status["webhook:1"]["last_error"] is None
    store.close()


def test_receiver_down_then_back_delivers_every_event_once_in_order(tmp_path: Path) -> None:
    port = free_port()
    receiver = Receiver(port=port)
    store = EventStore(tmp_path / "h.db")
    sink = WebhookSink(target(f"http://127.0.0.1:{port}/hook", name="phone"), 0, store)

    async def scenario() -> None:
        dispatcher = Dispatcher(store, [sink])
        await dispatcher.start()
        for n in range(1, 6):
            await dispatcher.publish(start(n))
        await wait_until(lambda: sink.last_error is not None, what="a failed attempt")
        assert "connection failed" in (sink.status()["last_error"] or "")
        assert sink.status()["outbox"]["pending"] == 5
        await asyncio.sleep(0.3)  # a few more failed retries while the receiver is down
        receiver.start()
        await wait_until(lambda: len(receiver.received()) >= 5, what="5 deliveries")
        await wait_until(lambda: sink.status()["outbox"]["pending"] == 0)
        await asyncio.sleep(0.3)  # room for duplicates to show up, if there were any
        await dispatcher.stop()

    try:
        run(scenario())
    finally:
        receiver.stop()
    assert delivery_ids(receiver.received()) == [f"ev{n:04d}-start" for n in range(1, 6)]
    assert store.outbox_counts("webhook:phone") == {"pending": 0, "delivered": 5, "failed": 0}
    store.close()


def test_restart_in_between_loses_nothing(tmp_path: Path) -> None:
    port = free_port()
    receiver = Receiver(port=port)
    config = target(f"http://127.0.0.1:{port}/hook", name="phone", secret="k")

    async def first_run() -> None:
        store = EventStore(tmp_path / "h.db")
        sink = WebhookSink(config, 0, store)
        dispatcher = Dispatcher(store, [sink])
        await dispatcher.start()
        for n in range(1, 4):
            await dispatcher.publish(start(n))
        await wait_until(lambda: sink.last_error is not None, what="a failed attempt")
        await dispatcher.stop()
        store.close()

    async def second_run() -> dict[str, int]:
        store = EventStore(tmp_path / "h.db")  # same file: a new harken process
        sink = WebhookSink(config, 0, store)
        dispatcher = Dispatcher(store, [sink])
        await dispatcher.start()
        await dispatcher.publish(start(4))
        await dispatcher.publish(end(4))  # filtered out (on: [start])
        await dispatcher.publish(start(5))
        receiver.start()
        await wait_until(lambda: len(receiver.received()) >= 5, what="5 deliveries")
        await wait_until(lambda: sink.status()["outbox"]["pending"] == 0)
        await asyncio.sleep(0.3)
        await dispatcher.stop()
        counts = store.outbox_counts("webhook:phone")
        store.close()
        return counts

    try:
        run(first_run())
        assert receiver.received() == []
        counts = run(second_run())
    finally:
        receiver.stop()
    requests = receiver.received()
    assert delivery_ids(requests) == [f"ev{n:04d}-start" for n in range(1, 6)]
    for request in requests:
        digest = hmac.new(b"k", request.body, hashlib.sha256).hexdigest()
        assert request.headers["x-harken-signature"] == f"sha256={digest}"
    assert counts == {"pending": 0, "delivered": 5, "failed": 0}


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_429_retry_after_is_honoured(tmp_path: Path, receiver: Receiver, form: str) -> None:
    def script(request: Request, index: int) -> Reply:
        if index == 0:
            when = datetime.now(UTC) + timedelta(seconds=2)
            value = "1" if form == "seconds" else format_datetime(when, usegmt=True)
            return 429, {"Retry-After": value}, b"slow down"
        return 200, {}, b""

    receiver.script = script
    store = EventStore(tmp_path / "h.db")
    # Without Retry-After the retry would follow within 10 ms.
    sink = WebhookSink(target(receiver.url(), retry_base_s=0.01, retry_max_s=0.01), 0, store)

    async def scenario() -> None:
        await sink.start()
        await hand_over(sink, sink.store, start(1))
        await wait_until(lambda: len(receiver.received()) == 2, timeout_s=6, what="the retry")
        await wait_until(lambda: sink.status()["outbox"]["delivered"] == 1)
        await sink.stop()

    run(scenario())
    first, second = receiver.received()
    assert delivery_ids([first, second]) == ["ev0001-start", "ev0001-start"]
    # HTTP-dates have whole seconds, so "now + 2 s" means between 1 and 2 s from now.
    assert second.at - first.at >= 0.9
    store.close()


def test_400_is_not_retried_and_is_reported(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.script = lambda request, index: (
        (400, {}, b"unknown topic") if index == 0 else (200, {}, b"")
    )
    store = EventStore(tmp_path / "h.db")
    sink = WebhookSink(target(receiver.url(), name="phone"), 0, store)

    async def scenario() -> dict[str, Any]:
        dispatcher = Dispatcher(store, [sink])
        await dispatcher.start()
        await dispatcher.publish(start(1))
        await dispatcher.publish(start(2))
        await wait_until(lambda: sink.status()["outbox"]["delivered"] == 1, what="event 2")
        await asyncio.sleep(0.3)  # a retry of event 1 would arrive within this
        status = dispatcher.status()["webhook:phone"]
        await dispatcher.stop()
        return status

    with caplog.at_level(logging.ERROR, logger="service.sinks.webhooks"):
        status = run(scenario())
    assert delivery_ids(receiver.received()) == ["ev0001-start", "ev0002-start"]
    assert status["outbox"] == {"pending": 0, "delivered": 1, "failed": 1}
    assert "HTTP 400" in status["last_error"] and "unknown topic" in status["last_error"]
    logged = [r.getMessage() for r in caplog.records]
    assert any("rejected" in line and "HTTP 400" in line for line in logged)
    store.close()


def test_5xx_and_timeouts_are_retried_until_delivered(tmp_path: Path, receiver: Receiver) -> None:
    def script(request: Request, index: int) -> Reply:
        if index == 0:
            return 503, {}, b"busy"
        if index == 1:
            time.sleep(0.6)  # longer than the target's timeout
        return 200, {}, b""

    receiver.script = script
    store = EventStore(tmp_path / "h.db")
    sink = WebhookSink(target(receiver.url(), timeout_s=0.3), 0, store)

    async def scenario() -> None:
        await sink.start()
        await hand_over(sink, sink.store, start(1))
        await hand_over(sink, sink.store, start(2))
        await wait_until(lambda: sink.status()["outbox"]["delivered"] == 2, what="both events")
        await sink.stop()

    run(scenario())
    ids = delivery_ids(receiver.received())
    # Event 1 went out three times (503, timeout, 200), at least once; event 2 only after it.
    assert ids == ["ev0001-start"] * 3 + ["ev0002-start"]
    store.close()


def test_slow_receiver_blocks_neither_dispatcher_nor_other_sinks(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.gate = threading.Event()
    store = EventStore(tmp_path / "h.db")
    sink = WebhookSink(target(receiver.url(), timeout_s=20.0), 0, store)
    recorder = Recorder()

    async def scenario() -> None:
        dispatcher = Dispatcher(store, [sink, recorder])
        await dispatcher.start()
        await dispatcher.publish(start(1))
        await wait_until(lambda: len(receiver.received()) == 1, what="the first request")
        # The receiver now holds the request open; events keep flowing everywhere else.
        for n in range(2, 6):
            await dispatcher.publish(start(n))
        await wait_until(lambda: len(recorder.messages) == 5, what="the other sink")
        await asyncio.wait_for(dispatcher.drain(), 2.0)  # the webhook sink took its messages too
        assert sink.status()["outbox"]["pending"] == 5
        assert sink.status()["state"] == "delivering"
        assert len(receiver.received()) == 1
        receiver.gate.set()
        await wait_until(lambda: sink.status()["outbox"]["delivered"] == 5, what="all 5")
        await dispatcher.stop()

    try:
        run(scenario())
    finally:
        receiver.gate.set()
    assert delivery_ids(receiver.received()) == [f"ev{n:04d}-start" for n in range(1, 6)]
    store.close()


def test_cooldown_through_the_sink(tmp_path: Path, receiver: Receiver) -> None:
    store = EventStore(tmp_path / "h.db")
    sink = WebhookSink(target(receiver.url(), cooldown_s=150.0, on=["start", "end"]), 0, store)

    async def scenario() -> None:
        await sink.start()
        for message in (start(1), start(2), end(1), end(2), start(4), start(5, "baby_cry")):
            await hand_over(sink, sink.store, message)  # events are a minute apart
        await wait_until(lambda: sink.status()["outbox"]["delivered"] == 4, what="4 deliveries")
        await asyncio.sleep(0.2)
        await sink.stop()

    run(scenario())
    assert delivery_ids(receiver.received()) == [
        "ev0001-start", "ev0001-end", "ev0004-start", "ev0005-start",
    ]
    assert sink.status()["suppressed_by_cooldown"] == 2
    store.close()


def test_notify_test_cli(
    tmp_path: Path, receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    receiver.script = lambda request, index: (
        (500, {}, b"broken") if request.path == "/bad" else (200, {}, b"")
    )
    config = tmp_path / "harken.yaml"
    config.write_text(
        "webhooks:\n"
        f"  - {{name: phone, url: '{receiver.url('/ntfy/house')}', format: ntfy, secret: k}}\n"
        f"  - {{name: broken, url: '{receiver.url('/bad')}'}}\n"
    )
    assert main(["notify-test", "phone", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "webhook:phone" in out and "HTTP 200" in out
    (request,) = receiver.received()
    body = request.json()
    assert request.path == "/ntfy/" and body["topic"] == "house"
    assert body["title"].startswith("Test:") and "Test notification" in body["message"]
    digest = hmac.new(b"k", request.body, hashlib.sha256).hexdigest()
    assert request.headers["x-harken-signature"] == f"sha256={digest}"

    assert main(["notify-test", "--config", str(config)]) == 1  # one of the two fails
    out = capsys.readouterr().out
    assert "OK   webhook:phone" in out and "FAIL webhook:broken" in out and "HTTP 500" in out

    assert main(["notify-test", "1", "--config", str(config)]) == 1  # by position
    assert "FAIL webhook:broken" in capsys.readouterr().out

    assert main(["notify-test", "nope", "--config", str(config)]) == 2
    assert "no webhook target 'nope' (targets: phone, broken)" in capsys.readouterr().err

    port = free_port()  # nothing listens there
    down = tmp_path / "down.yaml"
    down.write_text(f"webhooks:\n  - {{url: 'http://127.0.0.1:{port}/x'}}\n")
    assert main(["notify-test", "0", "--config", str(down)]) == 1
    assert "connection failed" in capsys.readouterr().out


def test_daemon_wires_webhooks_and_refuses_unknown_classes(
    tmp_path: Path, receiver: Receiver, t3_wav: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service import daemon

    settings = Settings(
        sources=[SourceConfig(name="kitchen", url=f"file:{t3_wav}", realtime=False)],
        store={"path": tmp_path / "h.db"},
        api={"enabled": False},
        webhooks=[target(receiver.url("/hook"), name="phone", classes=["smoke_alarm"])],
    )
    original = daemon.add_sinks

    def add_sinks_and_keep_running(runtime: daemon.Runtime) -> None:
        original(runtime)
        runtime.extras["serve_after_sources_end"] = True  # stay up until the test says stop

    monkeypatch.setattr(daemon, "add_sinks", add_sinks_and_keep_running)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run_daemon(settings, stop))
        try:
            await wait_until(lambda: len(receiver.received()) >= 1 or task.done(), timeout_s=30,
                             what="the smoke alarm notification")
        finally:
            stop.set()
            assert await asyncio.wait_for(task, 15) == 0

    run(scenario(), timeout_s=60)
    request = receiver.received()[0]
    body = request.json()
    assert (body["class"], body["source"], body["phase"]) == ("smoke_alarm", "kitchen", "start")
    assert 3.5 < body["start_s"] < 5.0  # the alarm starts at 4 s in the file

    bad = settings.model_copy(update={"webhooks": [target(receiver.url(), classes=["smoke_alrm"])]})
    runtime = daemon.build_runtime(bad)
    try:
        with pytest.raises(daemon.StartupError, match=r"webhooks\.0\.classes.*smoke_alrm"):
            original(runtime)
    finally:
        runtime.executor.shutdown()
        runtime.store.close()
