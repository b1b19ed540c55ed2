"""Pure parts of webhook delivery: request bodies per format, message templates, HMAC
signatures, the retry schedule and Retry-After parsing.

Nothing here does I/O or reads a clock; time and randomness are passed in, so every rule
is unit-testable and the adapter (`service/sinks/webhooks.py`) stays thin.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import string
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from service.events import EventMessage

WebhookFormat = Literal["generic", "ntfy", "gotify", "homeassistant"]
Outcome = Literal["delivered", "retry", "permanent"]

SIGNATURE_HEADER = "X-Harken-Signature"
DELIVERY_HEADER = "X-Harken-Delivery"
EVENT_HEADER = "X-Harken-Event"

# Human names of the shipped classes; any other class is shown with underscores as spaces.
CLASS_LABELS: dict[str, str] = {
    "smoke_alarm": "Smoke alarm",
    "baby_cry": "Baby crying",
    "glass_break": "Glass breaking",
}

# ntfy priorities are 1 (min) .. 5 (max/urgent); Gotify's Android app pops up and rings
# from 8 and is silent below 4. A smoke alarm is the one sound that must wake someone.
NTFY_PRIORITY: dict[str, int] = {"smoke_alarm": 5, "glass_break": 4, "baby_cry": 4}
GOTIFY_PRIORITY: dict[str, int] = {"smoke_alarm": 10, "glass_break": 8, "baby_cry": 8}
NTFY_DEFAULT_PRIORITY = 3
GOTIFY_DEFAULT_PRIORITY = 5
# ntfy tags whose names are emoji short codes show as emojis in front of the title.
NTFY_TAGS: dict[str, list[str]] = {
    "smoke_alarm": ["rotating_light", "fire"],
    "baby_cry": ["baby"],
    "glass_break": ["warning"],
}

# Fields a message template may use: plain names only (no attribute or index access,
# so a template can never reach into Python objects).
TEMPLATE_FIELDS: dict[str, str] = {
    "source": "name of the source (room), e.g. nursery",
    "class": "class name, e.g. smoke_alarm",
    "label": "human class name, e.g. Smoke alarm",
    "phase": "start or end",
    "status": "started or ended",
    "score": "score when the event was detected (0-1)",
    "peak_score": "highest score (end only; else the detection score)",
    "duration_s": "event duration in seconds (end only; else 0)",
    "time": "local wall-clock time of the event's start, HH:MM:SS",
    "date": "local date of the event's start, YYYY-MM-DD",
    "started_at": "UTC start time, ISO 8601",
    "event_id": "the event's id",
    "level_dbfs": "sound level in dBFS (or 0 when unknown)",
}

_SAMPLE_VALUES: dict[str, Any] = {
    "source": "nursery",
    "class": "smoke_alarm",
    "label": "Smoke alarm",
    "phase": "start",
    "status": "started",
    "score": 0.93,
    "peak_score": 0.97,
    "duration_s": 12.5,
    "time": "14:02:11",
    "date": "2024-05-01",
    "started_at": "2024-05-01T12:02:11.000Z",
    "event_id": "0" * 32,
    "level_dbfs": -23.5,
}


def class_label(class_name: str) -> str:
    return CLASS_LABELS.get(class_name, class_name.replace("_", " ").capitalize())


def check_template(template: str) -> None:
    """Raise ValueError naming the problem if `template` is not a safe message template."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{template!r}: {exc} (write {{{{ and }}}} for literal braces)") from None
    known = ", ".join(TEMPLATE_FIELDS)
    for _literal, field_name, format_spec, _conversion in parts:
        if field_name is None:
            continue
        if field_name == "" or field_name.isdigit():
            raise ValueError(
                f"{template!r}: positional field {{{field_name}}}; use a name: {known}"
            )
        if field_name not in TEMPLATE_FIELDS:
            raise ValueError(f"{template!r}: unknown field {{{field_name}}}; known fields: {known}")
        if format_spec and "{" in format_spec:
            raise ValueError(f"{template!r}: nested fields in a format spec are not allowed")
    try:
        template.format_map(_SAMPLE_VALUES)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{template!r}: {exc}") from None


def template_values(message: EventMessage) -> dict[str, Any]:
    """The values a template sees for one event message."""
    event = message.event
    local_start = event.started_at.astimezone()
    data = event.to_dict()
    return {
        "source": event.source,
        "class": event.class_name,
        "label": class_label(event.class_name),
        "phase": message.phase,
        "status": "started" if message.phase == "start" else "ended",
        "score": round(event.score, 3),
        "peak_score": round(event.peak_score if event.peak_score is not None else event.score, 3),
        "duration_s": event.duration_s or 0.0,
        "time": local_start.strftime("%H:%M:%S"),
        "date": local_start.strftime("%Y-%m-%d"),
        "started_at": data["started_at"],
        "event_id": event.id,
        "level_dbfs": round(event.level_dbfs, 1) if event.level_dbfs is not None else 0.0,
    }


def default_text(message: EventMessage) -> str:
    values = template_values(message)
    if message.phase == "start":
        return f"{values['label']} in {values['source']} at {values['time']}"
    return f"{values['label']} in {values['source']} ended after {values['duration_s']:.0f} s"


def render_text(message: EventMessage, templates: dict[str, str]) -> str:
    """The notification text: the class's template (or `default`'s), else a built-in text.

    Templates are checked at start-up with `check_template`; should one still fail on a real
    value, the built-in text is sent rather than nothing.
    """
    template = templates.get(message.event.class_name, templates.get("default"))
    if template is None:
        return default_text(message)
    try:
        return template.format_map(template_values(message))
    except (ValueError, TypeError, KeyError):
        return default_text(message)


def title_text(message: EventMessage, test: bool = False) -> str:
    label = class_label(message.event.class_name)
    title = label if message.phase == "start" else f"{label} ended"
    return f"Test: {title}" if test else title


def delivery_id(message: EventMessage) -> str:
    """Stable id of one notification: the same across retries and restarts, so receivers can
    drop duplicates (delivery is at least once)."""
    return f"{message.event.id}-{message.phase}"


@dataclass(frozen=True)
class RenderedRequest:
    """One request as it waits in the outbox: the exact body bytes that will be signed."""

    delivery_id: str
    body: str
    content_type: str = "application/json"

    def body_bytes(self) -> bytes:
        return self.body.encode("utf-8")


def _json(data: dict[str, Any]) -> str:
    # Compact and stable: the signature covers these exact bytes.
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def render_request(
    message: EventMessage,
    fmt: WebhookFormat,
    url: str,
    templates: dict[str, str] | None = None,
    priorities: dict[str, int] | None = None,
    test: bool = False,
) -> RenderedRequest:
    """Render the request body of one notification in the target's format."""
    templates = templates or {}
    priorities = priorities or {}
    did = delivery_id(message)
    text = render_text(message, templates)
    if test:
        text = f"Test notification from harken. {text}"
    title = title_text(message, test)
    class_name = message.event.class_name
    event_dict = message.to_dict()
    if fmt == "generic":
        body = {**event_dict, "delivery_id": did, "title": title, "message": text, "test": test}
    elif fmt == "homeassistant":
        # Flat, so automations read trigger.json.source, .message, trigger.json['class'].
        body = {
            **event_dict,
            "delivery_id": did,
            "title": title,
            "message": text,
            "test": test,
            "event_id": message.event.id,
        }
    elif fmt == "ntfy":
        _root, topic = ntfy_endpoint(url)
        priority = priorities.get(class_name, NTFY_PRIORITY.get(class_name, NTFY_DEFAULT_PRIORITY))
        tags = list(NTFY_TAGS.get(class_name, []))
        if message.phase == "end":
            priority = min(priority, NTFY_DEFAULT_PRIORITY)
            tags = ["white_check_mark"]
        body = {
            "topic": topic,
            "title": title,
            "message": text,
            "priority": priority,
            "tags": [*tags, class_name, message.event.source],
        }
    elif fmt == "gotify":
        priority = priorities.get(
            class_name, GOTIFY_PRIORITY.get(class_name, GOTIFY_DEFAULT_PRIORITY)
        )
        if message.phase == "end":
            priority = min(priority, 4)
        body = {
            "title": title,
            "message": text,
            "priority": priority,
            "extras": {"harken::event": {**event_dict, "delivery_id": did}},
        }
    else:  # pragma: no cover - the config's Literal rules this out
        raise ValueError(f"unknown webhook format {fmt!r}")
    return RenderedRequest(did, _json(body))


def request_url(fmt: WebhookFormat, url: str) -> str:
    """Where the request goes: ntfy's JSON publishing posts to the server root, not the topic."""
    return ntfy_endpoint(url)[0] if fmt == "ntfy" else url


def ntfy_endpoint(url: str) -> tuple[str, str]:
    """Split an ntfy topic URL (https://ntfy.sh/mytopic) into root URL and topic."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    root_path, _, topic = path.rpartition("/")
    if not topic:
        raise ValueError(f"ntfy URL {redact_url(url)!r} names no topic; write https://HOST/TOPIC")
    return urlunsplit((parts.scheme, parts.netloc, root_path + "/", parts.query, "")), topic


def sign(secret: str, body: bytes) -> str:
    """The X-Harken-Signature value: "sha256=" + hex HMAC-SHA256 of the exact body bytes."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    """What a receiver does: recompute and compare in constant time."""
    return hmac.compare_digest(sign(secret, body), signature)


def request_headers(
    rendered: RenderedRequest,
    secret: str | None,
    extra: dict[str, str] | None = None,
    phase: str | None = None,
    user_agent: str = "harken",
) -> dict[str, str]:
    """Headers of one request; the user's extra headers win over the defaults but never
    replace the id or the signature."""
    headers = {"Content-Type": rendered.content_type, "User-Agent": user_agent}
    headers.update(extra or {})
    headers["Idempotency-Key"] = rendered.delivery_id
    headers[DELIVERY_HEADER] = rendered.delivery_id
    if phase:
        headers[EVENT_HEADER] = phase
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, rendered.body_bytes())
    return headers


def classify(status_code: int) -> Outcome:
    """2xx delivered; 408, 429 and 5xx worth retrying; anything else will not get better."""
    if 200 <= status_code < 300:
        return "delivered"
    if status_code in (408, 429) or status_code >= 500:
        return "retry"
    return "permanent"


def backoff_s(attempt: int, base_s: float, max_s: float, jitter: float, rand: float) -> float:
    """Delay before retry number `attempt` (1 = first retry): base·2^(attempt-1), capped at
    `max_s`, then shortened by up to `jitter` (0-1) of itself using `rand` in [0, 1), so many
    harkens behind one router do not retry in lockstep."""
    exponent = min(max(attempt - 1, 0), 60)  # 2**60 s is forever; avoids float overflow
    delay = min(max_s, base_s * (2.0**exponent))
    return delay * (1.0 - jitter * rand)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent
    or unreadable. A date in the past means "now" (0)."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def redact_url(url: str) -> str:
    """The URL without credentials or query (Gotify tokens live there), for logs and status."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "…" if parts.query else "", ""))


class NotifyFilter:
    """Which event messages a target is told about: class filter, transitions, cooldown.

    The cooldown is decided per event at its start, in event time (`detected_at`): an event
    of a class starting less than `cooldown_s` after the last notified event of that class is
    held back, and so is its end. The clock is the events' own, so the rule is the same live
    and in tests.
    """

    MAX_HELD = 1000  # events held back whose end has not come yet (bounded memory)

    def __init__(self, classes: list[str] | None, on: list[str], cooldown_s: float) -> None:
        self.classes = set(classes) if classes else None
        self.on = set(on)
        self.cooldown_s = cooldown_s
        self._last_start: dict[str, datetime] = {}
        self._held: dict[str, None] = {}  # ordered set of event ids
        self.last_was_cooldown = False

    def decide(self, message: EventMessage) -> bool:
        self.last_was_cooldown = False
        event = message.event
        if self.classes is not None and event.class_name not in self.classes:
            return False
        if message.phase == "start":
            last = self._last_start.get(event.class_name)
            if (
                self.cooldown_s > 0
                and last is not None
                and (event.detected_at - last).total_seconds() < self.cooldown_s
            ):
                self._held[event.id] = None
                while len(self._held) > self.MAX_HELD:
                    self._held.pop(next(iter(self._held)))
                self.last_was_cooldown = True
                return False
            self._last_start[event.class_name] = event.detected_at
            return "start" in self.on
        if event.id in self._held:
            del self._held[event.id]
            self.last_was_cooldown = True
            return False
        return "end" in self.on
