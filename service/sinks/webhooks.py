"""Webhook sink: phone notifications (ntfy, Gotify), Home Assistant webhook triggers and
generic signed JSON, delivered from the store's durable outbox.

One `WebhookSink` per configured target. `handle()` only filters, renders the body and
writes it to the outbox (a sub-millisecond SQLite insert), so a slow or dead receiver never
holds up detection, the dispatcher or other sinks. A delivery task per target sends the
outbox in order, one request at a time: a failed head-of-line item is retried with
exponential backoff and jitter before anything behind it is sent, so notifications never
overtake each other. Items are marked delivered only after a 2xx, so a restart resends
whatever was not acknowledged (at least once; the `Idempotency-Key` lets receivers drop
duplicates).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from service.config import Settings, WebhookConfig
from service.events import EventMessage, EventRecord, utc_now
from service.sinks.store import EventStore
from service.sinks.webhook_format import (
    NotifyFilter,
    Outcome,
    RenderedRequest,
    backoff_s,
    classify,
    parse_retry_after,
    redact_url,
    render_request,
    request_headers,
    request_url,
)

log = logging.getLogger(__name__)

STOP_GRACE_S = 2.0  # how long stop() lets an in-flight request finish before cancelling it
ERROR_PAUSE_S = 1.0  # pause after an unexpected error in the delivery loop (e.g. a locked store)


class WebhookConfigError(ValueError):
    """A webhook target does not fit the model (unknown class); the message names the key."""


def check_targets(targets: Sequence[WebhookConfig], class_names: Sequence[str]) -> None:
    """Refuse class names the model does not know in a target's filter, templates or priorities."""
    from service.config import unknown_class_problems

    raw = {"webhooks": [target.model_dump(include={"classes", "message", "priority"}) for target in targets]}
    problems = unknown_class_problems(raw, class_names)
    if problems:
        raise WebhookConfigError("; ".join(problems))


def _user_agent() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"harken/{version('harken')}"
    except PackageNotFoundError:
        return "harken/dev"


@dataclass(frozen=True)
class DeliveryResult:
    """What one request attempt came to."""

    outcome: Outcome
    status_code: int | None
    detail: str
    elapsed_ms: float
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "delivered"


async def send_once(
    client: httpx.AsyncClient,
    target: WebhookConfig,
    rendered: RenderedRequest,
    phase: str | None,
    user_agent: str = "harken",
) -> DeliveryResult:
    """POST one rendered notification and classify the result; never raises for network trouble."""
    headers = request_headers(rendered, target.secret, target.headers, phase, user_agent)
    url = request_url(target.format, target.url)
    started = time.monotonic()
    try:
        response = await client.post(
            url, content=rendered.body_bytes(), headers=headers, timeout=target.timeout_s
        )
    except httpx.TimeoutException:
        return DeliveryResult(
            "retry",
            None,
            f"timed out after {target.timeout_s:g} s",
            (time.monotonic() - started) * 1000,
        )
    except httpx.TransportError as exc:
        reason = str(exc) or type(exc).__name__
        return DeliveryResult(
            "retry", None, f"connection failed: {reason}", (time.monotonic() - started) * 1000
        )
    elapsed_ms = (time.monotonic() - started) * 1000
    outcome = classify(response.status_code)
    detail = f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
    if outcome != "delivered":
        text = response.text.strip().replace("\n", " ")
        if text:
            detail += f": {text[:200]}"
    retry_after = parse_retry_after(response.headers.get("Retry-After"), datetime.now(UTC))
    return DeliveryResult(outcome, response.status_code, detail, elapsed_ms, retry_after)


class WebhookSink:
    """One webhook target fed by the dispatcher, delivering from the durable outbox."""

    def __init__(
        self,
        target: WebhookConfig,
        index: int,
        store: EventStore,
        *,
        rand: Callable[[], float] = random.random,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.target = target
        self.name = target.key(index)
        self.store = store
        self._rand = rand
        self._transport = transport
        self._filter = NotifyFilter(target.classes, target.on, target.cooldown_s)
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._user_agent = _user_agent()
        # Backoff of the head-of-line item, in loop-monotonic time; after a restart the
        # head is tried at once (the receiver may well be back).
        self._retry_seq: int | None = None
        self._retry_at = 0.0
        self.state = "stopped"
        self.suppressed = 0
        self.last_error: str | None = None
        self.last_error_at: str | None = None
        self.last_delivered_at: str | None = None
        self.last_status_code: int | None = None

    # ------------------------------------------------------------ sink interface
    async def start(self) -> None:
        self._stopping = False
        self._client = httpx.AsyncClient(
            timeout=self.target.timeout_s, transport=self._transport, follow_redirects=False
        )
        pending = self.store.outbox_counts(self.name)["pending"]
        if pending:
            log.info(
                "%s: %d notification(s) pending from an earlier run; resuming", self.name, pending
            )
        self.state = "idle"
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._deliver_forever(), name=f"deliver-{self.name}")

    def outbox_entries(self, message: EventMessage) -> list[dict[str, Any]]:
        """Filter and render; the dispatcher stores the request with the event in one transaction."""
        if not self._filter.decide(message):
            if self._filter.last_was_cooldown:
                self.suppressed += 1
                log.debug(
                    "%s: %s of %s held back by the %g s cooldown",
                    self.name,
                    message.phase,
                    message.event.class_name,
                    self.target.cooldown_s,
                )
            return []
        rendered = render_request(
            message, self.target.format, self.target.url, self.target.message, self.target.priority
        )
        return [{
            "delivery_id": rendered.delivery_id,
            "event_id": message.event.id,
            "phase": message.phase,
            "class": message.event.class_name,
            "body": rendered.body,
            "content_type": rendered.content_type,
        }]

    def deliver_without_outbox(self, payloads: list[dict[str, Any]]) -> None:
        if payloads:
            log.error("%s: store not writable; %d notification(s) could not be queued", self.name, len(payloads))

    async def handle(self, message: EventMessage) -> None:
        """The dispatcher has queued this message's request in the outbox: deliver it."""
        self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            # Let an in-flight request finish so its outcome is recorded; what is left stays
            # pending in the outbox for the next start.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(
                    asyncio.shield(self._task), min(STOP_GRACE_S, self.target.timeout_s)
                )
            if not self._task.done():
                self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        self.state = "stopped"

    def status(self) -> dict[str, Any]:
        try:
            counts = self.store.outbox_counts(self.name)
        except Exception as exc:  # status must answer even when the store is in trouble
            counts = {"error": str(exc)}
        retry_in_s = None
        if self.state == "retrying":
            retry_in_s = round(max(0.0, self._retry_at - time.monotonic()), 1)
        return {
            "kind": "webhook",
            "format": self.target.format,
            "url": redact_url(self.target.url),
            "state": self.state,
            "outbox": counts,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_status_code": self.last_status_code,
            "last_delivered_at": self.last_delivered_at,
            "retry_in_s": retry_in_s,
            "suppressed_by_cooldown": self.suppressed,
        }

    # ------------------------------------------------------------ delivery
    async def _deliver_forever(self) -> None:
        while not self._stopping:
            try:
                await self._deliver_next()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A locked or broken store, a bug: report, pause, go on; nothing is marked done.
                self._note_error(f"delivery loop: {exc}")
                log.exception(
                    "%s: delivery loop failed; retrying in %.0f s", self.name, ERROR_PAUSE_S
                )
                await self._sleep(ERROR_PAUSE_S)

    async def _sleep(self, seconds: float) -> None:
        """Wait up to `seconds`, waking early for new work or stop()."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(0.0, seconds))

    async def _deliver_next(self) -> None:
        # Clear before looking: handle() writes then sets without awaiting in between, so a
        # message queued after this query still wakes the wait below.
        self._wake.clear()
        # The head of the line, whatever its retry time: nothing overtakes it.
        items = self.store.outbox_due(self.name, now=math.inf, limit=1)
        if not items:
            self.state = "idle"
            await self._wake.wait()
            return
        item = items[0]
        if item.seq == self._retry_seq:
            remaining_s = self._retry_at - time.monotonic()
            if remaining_s > 0:
                self.state = "retrying"
                await self._sleep(remaining_s)
                return
        body = item.payload.get("body")
        if not isinstance(body, str):
            self.store.outbox_failed(
                item.seq, "outbox item has no body (written by another version?)"
            )
            return
        rendered = RenderedRequest(
            str(item.payload.get("delivery_id", item.seq)),
            body,
            str(item.payload.get("content_type", "application/json")),
        )
        self.state = "delivering"
        assert self._client is not None
        result = await send_once(
            self._client, self.target, rendered, item.payload.get("phase"), self._user_agent
        )
        self.last_status_code = result.status_code
        if result.outcome == "delivered":
            self.store.outbox_delivered(item.seq)
            self._retry_seq = None
            self.last_delivered_at = utc_now().isoformat(timespec="seconds")
            log.debug(
                "%s: delivered %s (%s, %.0f ms)",
                self.name,
                rendered.delivery_id,
                result.detail,
                result.elapsed_ms,
            )
        elif result.outcome == "retry":
            attempt = item.attempts + 1
            if result.retry_after_s is not None:
                delay_s = min(result.retry_after_s, self.target.retry_after_max_s)
            else:
                delay_s = backoff_s(
                    attempt,
                    self.target.retry_base_s,
                    self.target.retry_max_s,
                    self.target.retry_jitter,
                    self._rand(),
                )
            self.store.outbox_retry(item.seq, time.time() + delay_s, result.detail)
            self._retry_seq = item.seq
            self._retry_at = time.monotonic() + delay_s
            self._note_error(result.detail)
            log.warning(
                "%s: %s not delivered (%s); attempt %d, retrying in %.1f s",
                self.name,
                rendered.delivery_id,
                result.detail,
                attempt,
                delay_s,
            )
        else:
            self.store.outbox_failed(item.seq, result.detail)
            self._retry_seq = None
            self._note_error(result.detail)
            log.error(
                "%s: %s rejected by the receiver (%s); not retried, check the target's URL, "
                "token and format",
                self.name,
                rendered.delivery_id,
                result.detail,
            )

    def _note_error(self, detail: str) -> None:
        self.last_error = detail
        self.last_error_at = utc_now().isoformat(timespec="seconds")


def build_webhook_sinks(
    settings: Settings, store: EventStore, class_names: Sequence[str]
) -> list[WebhookSink]:
    """One sink per configured target; raises WebhookConfigError for classes the model lacks."""
    check_targets(settings.webhooks, class_names)
    return [WebhookSink(target, index, store) for index, target in enumerate(settings.webhooks)]


# ---------------------------------------------------------------- notify-test
def make_test_message(class_name: str) -> EventMessage:
    """A made-up event for `harken notify-test`; its ids start with "test"."""
    now = utc_now()
    event = EventRecord(
        id=f"test{uuid.uuid4().hex[:28]}",
        source="harken",
        class_name=class_name,
        start_s=0.0,
        detected_s=0.0,
        started_at=now,
        detected_at=now,
        score=1.0,
        model_version="test",
        extra={"test": True},
    )
    return EventMessage("start", event)


def select_targets(settings: Settings, wanted: str | None) -> list[tuple[str, WebhookConfig]]:
    """Targets by name or index (`phone`, `0`, `webhook:phone`); all when `wanted` is None."""
    targets = [(t.key(i), t) for i, t in enumerate(settings.webhooks)]
    if wanted is None:
        return targets
    for key, target in targets:
        if wanted in (key, key.removeprefix("webhook:")):
            return [(key, target)]
    if wanted.isdigit() and int(wanted) < len(targets):  # the position, named or not
        return [targets[int(wanted)]]
    known = ", ".join(k.removeprefix("webhook:") for k, _ in targets) or "none configured"
    raise WebhookConfigError(f"no webhook target {wanted!r} (targets: {known})")


async def notify_test(
    targets: Sequence[tuple[str, WebhookConfig]],
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[tuple[str, WebhookConfig, DeliveryResult]]:
    """Send one test notification to each target directly (no outbox, no retries)."""
    results = []
    user_agent = _user_agent()
    async with httpx.AsyncClient(transport=transport, follow_redirects=False) as client:
        for key, target in targets:
            class_name = (target.classes or ["smoke_alarm"])[0]
            message = make_test_message(class_name)
            rendered = render_request(
                message, target.format, target.url, target.message, target.priority, test=True
            )
            results.append(
                (key, target, await send_once(client, target, rendered, "test", user_agent))
            )
    return results
