"""Fans events out to sinks; a slow or failing sink never delays the pipeline or the others.

The store is written first and synchronously, so every event is durable before anyone is
told about it. Sinks that deliver over a network (MQTT, webhooks) implement
`outbox_entries(message) -> list[payload]`: those payloads are written into the store's
outbox in the same transaction as the event, so a crash right after an event is stored
cannot lose its notification. Each sink has its own queue and worker task.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from service.events import EventMessage
from service.sinks.store import EventStore, StoreError

log = logging.getLogger(__name__)

SINK_QUEUE = 10000


@dataclass(frozen=True)
class LiveUpdate:
    """Scores and level of one source at one moment, for dashboards and MQTT level."""

    source: str
    audio_s: float
    scores: dict[str, float]
    level_dbfs: float
    active: dict[str, bool] = field(default_factory=dict)


@runtime_checkable
class Sink(Protocol):
    """The required part of a sink. Optional: `start()`, `stop()`, `on_live(update)`,
    `status()`, `outbox_entries(message)` and `deliver_without_outbox(payloads)`."""

    name: str

    async def handle(self, message: EventMessage) -> None: ...


class Dispatcher:
    """Publishes event messages to the store, then to every sink through its own queue."""

    def __init__(self, store: EventStore | None, sinks: list[Any] | None = None) -> None:
        self.store = store
        self.sinks: list[Any] = []
        self._queues: dict[str, asyncio.Queue[EventMessage]] = {}
        self._workers: list[asyncio.Task[None]] = []
        self.failures: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self.delivered: dict[str, int] = {}
        self.store_failures = 0
        for sink in sinks or []:
            self.add_sink(sink)

    def add_sink(self, sink: Any) -> None:
        self.sinks.append(sink)
        self.failures[sink.name] = 0
        self.dropped[sink.name] = 0
        self.delivered[sink.name] = 0

    async def start(self) -> None:
        for sink in self.sinks:
            start = getattr(sink, "start", None)
            if start is not None:
                try:
                    await start()
                except Exception as exc:
                    self.failures[sink.name] += 1
                    log.error("sink %s failed to start: %s", sink.name, exc)
            queue: asyncio.Queue[EventMessage] = asyncio.Queue(maxsize=SINK_QUEUE)
            self._queues[sink.name] = queue
            self._workers.append(asyncio.create_task(self._work(sink, queue), name=f"sink-{sink.name}"))

    async def _work(self, sink: Any, queue: asyncio.Queue[EventMessage]) -> None:
        while True:
            message = await queue.get()
            try:
                await sink.handle(message)
                self.delivered[sink.name] += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures[sink.name] += 1
                log.error("sink %s failed on %s of event %s: %s", sink.name, message.phase, message.event.id, exc)
            finally:
                queue.task_done()

    async def publish(self, message: EventMessage) -> None:
        """Store the event and the durable sinks' outbox entries in one transaction, then
        hand the message to every sink's queue."""
        entries: list[tuple[str, dict[str, Any]]] = []
        for sink in self.sinks:
            outbox_entries = getattr(sink, "outbox_entries", None)
            if outbox_entries is None:
                continue
            try:
                entries += [(sink.name, payload) for payload in outbox_entries(message)]
            except Exception as exc:
                self.failures[sink.name] += 1
                log.error("sink %s could not prepare event %s: %s", sink.name, message.event.id, exc)
        stored = self.store is None
        if self.store is not None:
            try:
                self.store.save_event(message.event, entries)
                stored = True
            except StoreError as exc:
                # Detection and the other sinks go on; the status shows the store degraded.
                self.store_failures += 1
                log.error("event %s not stored (disk full or store not writable?): %s", message.event.id, exc)
        for sink in self.sinks:
            if not stored:
                # The outbox is not writable: sinks that can deliver from memory do so.
                fallback = getattr(sink, "deliver_without_outbox", None)
                if fallback is not None:
                    try:
                        fallback([payload for name, payload in entries if name == sink.name])
                    except Exception as exc:
                        log.error("sink %s lost event %s: %s", sink.name, message.event.id, exc)
            queue = self._queues.get(sink.name)
            if queue is None:
                continue
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                self.dropped[sink.name] += 1
                log.error("sink %s is %d messages behind; dropped event %s", sink.name, SINK_QUEUE, message.event.id)

    def live(self, update: LiveUpdate) -> None:
        """Hand a live update to every sink that wants one; must stay cheap."""
        for sink in self.sinks:
            on_live = getattr(sink, "on_live", None)
            if on_live is not None:
                try:
                    on_live(update)
                except Exception:
                    log.exception("sink %s failed on a live update", sink.name)

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Wait until queued messages have been handed to their sinks."""
        try:
            await asyncio.wait_for(asyncio.gather(*(q.join() for q in self._queues.values())), timeout_s)
        except TimeoutError:
            log.warning("sinks did not drain within %.1f s", timeout_s)

    async def stop(self, timeout_s: float = 5.0) -> None:
        await self.drain(timeout_s)
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for sink in self.sinks:
            stop = getattr(sink, "stop", None)
            if stop is not None:
                try:
                    await asyncio.wait_for(stop(), timeout_s)
                except Exception as exc:
                    log.error("sink %s did not stop cleanly: %s", sink.name, exc)

    def status(self) -> dict[str, Any]:
        sinks = {}
        for sink in self.sinks:
            extra = getattr(sink, "status", None)
            sinks[sink.name] = {
                "delivered": self.delivered[sink.name],
                "failures": self.failures[sink.name],
                "dropped": self.dropped[sink.name],
                "queued": self._queues[sink.name].qsize() if sink.name in self._queues else 0,
                **(extra() if callable(extra) else {}),
            }
        return sinks
