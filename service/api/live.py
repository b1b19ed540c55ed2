"""LiveHub: the dispatcher sink that fans live scores, level and events out to WebSocket clients.

The pipeline hands every live update to `on_live`, which only remembers the latest one per
source (O(1), no matter how many clients). A ticker sends what changed at most every
`interval_s` (~10 Hz); events and control changes go out at once. Each client has a small
bounded queue: a client that cannot keep up is disconnected instead of buffering without
bound or slowing anyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from typing import Any

from service.controls import ClassControl, ClassControls
from service.events import EventMessage, iso, utc_now
from service.sinks.dispatcher import LiveUpdate

log = logging.getLogger(__name__)

CLIENT_QUEUE = 64
CLOSE = object()  # queue sentinel: the hub is stopping


class LiveClient:
    """One connected WebSocket: the messages waiting to be sent to it."""

    def __init__(self, maxsize: int = CLIENT_QUEUE) -> None:
        self.queue: asyncio.Queue[str | object] = asyncio.Queue(maxsize=maxsize)
        self.dropped = False  # set when it fell behind; its handler closes the socket

    def offer(self, text: str) -> bool:
        if self.dropped:
            return False
        try:
            self.queue.put_nowait(text)
            return True
        except asyncio.QueueFull:
            self.dropped = True
            # Wake the sender so it notices at once, even though the queue is full.
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.queue.put_nowait(CLOSE)
            return False


class LiveHub:
    """Dispatcher sink (`name`, `handle`, `on_live`, `start`, `stop`, `status`) for live clients."""

    name = "live"

    def __init__(
        self,
        controls: ClassControls | None = None,
        interval_s: float = 0.1,
        client_queue: int = CLIENT_QUEUE,
    ) -> None:
        self.interval_s = interval_s
        self.client_queue = client_queue
        self.clients: set[LiveClient] = set()
        self.latest: dict[str, LiveUpdate] = {}
        self.events_total: Counter[tuple[str, str]] = Counter()  # (source, class) -> events started
        self.clients_dropped = 0
        self.messages_sent = 0
        self._pending: set[str] = set()  # sources with an update not yet sent
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticker: asyncio.Task[None] | None = None
        if controls is not None:
            controls.subscribe(self._on_control)

    # ----------------------------------------------------------------- sink interface
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ticker = asyncio.create_task(self._tick(), name="live-ticker")

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
        for client in list(self.clients):
            with contextlib.suppress(asyncio.QueueFull):
                client.queue.put_nowait(CLOSE)

    def on_live(self, update: LiveUpdate) -> None:
        """Called by the pipeline for every update; only remembers it."""
        self.latest[update.source] = update
        self._pending.add(update.source)

    async def handle(self, message: EventMessage) -> None:
        if message.phase == "start":
            self.events_total[(message.event.source, message.event.class_name)] += 1
        self.broadcast({"type": "event", "phase": message.phase, "event": message.event.to_dict()})

    def status(self) -> dict[str, Any]:
        return {
            "state": "ok",
            "clients": len(self.clients),
            "clients_dropped": self.clients_dropped,
        }

    # ----------------------------------------------------------------- clients
    def connect(self) -> LiveClient:
        client = LiveClient(self.client_queue)
        self.clients.add(client)
        return client

    def disconnect(self, client: LiveClient) -> None:
        self.clients.discard(client)

    def snapshot(self) -> list[dict[str, Any]]:
        """The latest live message of every source, sent to a client when it connects."""
        return [live_message(u) for u in self.latest.values()]

    def broadcast(self, message: dict[str, Any]) -> None:
        """Queue one message for every client (encoded once); drop those that are full."""
        if not self.clients:
            return
        text = json.dumps(message, separators=(",", ":"))
        for client in list(self.clients):
            if client.offer(text):
                self.messages_sent += 1
            elif client in self.clients:
                self.clients.discard(client)
                self.clients_dropped += 1
                log.warning("live client dropped: it fell %d messages behind", self.client_queue)

    def clip_ready(self, event_id: str) -> None:
        self.broadcast({"type": "clip", "id": event_id})

    def _on_control(self, control: ClassControl) -> None:
        message = {"type": "control", "control": control.to_dict()}
        # MQTT commands arrive on paho's thread; asyncio queues belong to the loop's thread.
        if self._loop is not None and not _in_loop(self._loop):
            self._loop.call_soon_threadsafe(self.broadcast, message)
        else:
            self.broadcast(message)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            pending, self._pending = self._pending, set()
            for source in pending:
                self.broadcast(live_message(self.latest[source]))


def live_message(update: LiveUpdate) -> dict[str, Any]:
    return {
        "type": "live",
        "source": update.source,
        "audio_s": update.audio_s,
        "scores": update.scores,
        "level_dbfs": update.level_dbfs,
        "active": update.active,
        "at": iso(utc_now()),
    }


def _in_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
