"""Pure webhook parts: templates, bodies, signatures, backoff, Retry-After, filtering."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from service.config import ConfigError, load_settings
from service.events import EventMessage, EventRecord
from service.sinks import webhook_format as wf

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def event(
    class_name: str = "smoke_alarm",
    at_s: float = 0.0,
    event_id: str = "e1",
    source: str = "kitchen",
) -> EventRecord:
    at = T0 + timedelta(seconds=at_s)
    return EventRecord(
        id=event_id,
        source=source,
        class_name=class_name,
        start_s=at_s,
        detected_s=at_s + 0.3,
        started_at=at,
        detected_at=at,
        score=0.91,
        model_version="t",
        level_dbfs=-20.0,
    )


def ended(record: EventRecord, duration_s: float = 12.0) -> EventRecord:
    return record.ended(
        end_s=record.start_s + duration_s,
        ended_at=record.started_at + timedelta(seconds=duration_s),
        peak_score=0.97,
        mean_score=0.8,
        flicker=0,
    )


@pytest.mark.parametrize(
    "template",
    ["Smoke in {source}!", "{label} ({score:.2f}) at {time}", "{{literal}} {class}", "no fields"],
)
def test_good_templates_pass(template: str) -> None:
    wf.check_template(template)


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("Smoke in {room}", "unknown field {room}"),
        ("{source.__class__}", "unknown field"),
        ("{source[0]}", "unknown field"),
        ("{} in kitchen", "positional field"),
        ("{0}", "positional field"),
        ("{score:d}", "Unknown format code"),
        ("{source:{label}}", "nested fields"),
        ("Smoke {", "Single '{'"),
    ],
)
def test_bad_templates_are_refused_with_the_reason(template: str, why: str) -> None:
    with pytest.raises(ValueError) as info:
        wf.check_template(template)
    assert why in str(info.value)


def test_bad_template_is_a_config_error_naming_the_key(tmp_path) -> None:
    path = tmp_path / "h.yaml"
    path.write_text(
        "webhooks:\n  - url: http://127.0.0.1:9/x\n    message: {smoke_alarm: 'Smoke in {room}!'}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    text = str(info.value)
    assert "webhooks.0.message" in text and "unknown field {room}" in text and "source" in text


def test_yaml_on_key_is_read_as_on_not_as_true(tmp_path) -> None:
    path = tmp_path / "h.yaml"
    path.write_text("webhooks:\n  - url: http://127.0.0.1:9/x\n    on: [start, end]\n")
    assert load_settings(path, environ={}).webhooks[0].on == ["start", "end"]
    env = {"HARKEN_WEBHOOKS": "[{url: 'http://a/b', on: [end]}]"}
    assert load_settings(None, environ=env).webhooks[0].on == ["end"]


def test_config_refuses_ntfy_url_without_topic_and_bad_priorities() -> None:
    with pytest.raises(ConfigError, match="names no topic"):
        load_settings(
            None, environ={"HARKEN_WEBHOOKS": "[{url: 'https://ntfy.sh/', format: ntfy}]"}
        )
    with pytest.raises(ConfigError, match="ntfy priorities are 1-5"):
        load_settings(
            None,
            environ={
                "HARKEN_WEBHOOKS": "[{url: 'https://ntfy.sh/t', format: ntfy, "
                "priority: {baby_cry: 9}}]"
            },
        )
    with pytest.raises(ConfigError, match="must be unique"):
        load_settings(
            None,
            environ={
                "HARKEN_WEBHOOKS": "[{url: 'http://a/1', name: x}, {url: 'http://a/2', name: x}]"
            },
        )


def test_render_text_uses_class_template_then_default_then_builtin() -> None:
    start = EventMessage("start", event())
    assert wf.render_text(start, {"smoke_alarm": "Smoke in {source}!"}) == "Smoke in kitchen!"
    assert wf.render_text(start, {"default": "{label} / {status}"}) == "Smoke alarm / started"
    assert wf.render_text(start, {}).startswith("Smoke alarm in kitchen at ")
    end = EventMessage("end", ended(event()))
    assert wf.render_text(end, {}) == "Smoke alarm in kitchen ended after 12 s"
    assert wf.render_text(end, {"smoke_alarm": "{duration_s:.1f}|{peak_score}"}) == "12.0|0.97"


def test_generic_body_is_the_event_message_plus_a_delivery_id() -> None:
    message = EventMessage("start", event())
    body = json.loads(wf.render_request(message, "generic", "http://x/hook").body)
    expected = message.to_dict()
    assert {k: body[k] for k in expected} == expected  # the shared event schema, unchanged
    assert body["delivery_id"] == "e1-start" and body["title"] == "Smoke alarm"
    assert body["message"].startswith("Smoke alarm in kitchen")


def test_ntfy_body_priority_and_tags_per_class_and_phase() -> None:
    url = "https://push.example/ntfy/house"
    assert wf.ntfy_endpoint(url) == ("https://push.example/ntfy/", "house")
    assert wf.request_url("ntfy", url) == "https://push.example/ntfy/"
    smoke = json.loads(wf.render_request(EventMessage("start", event()), "ntfy", url).body)
    assert smoke["topic"] == "house" and smoke["priority"] == 5
    assert smoke["tags"][:2] == ["rotating_light", "fire"] and "smoke_alarm" in smoke["tags"]
    smoke_end = json.loads(wf.render_request(EventMessage("end", ended(event())), "ntfy", url).body)
    assert smoke_end["priority"] == 3 and smoke_end["title"] == "Smoke alarm ended"
    cry = json.loads(wf.render_request(EventMessage("start", event("baby_cry")), "ntfy", url).body)
    assert cry["priority"] == 4 and "baby" in cry["tags"]
    other = wf.render_request(
        EventMessage("start", event("doorbell")), "ntfy", url, priorities={"doorbell": 1}
    )
    assert json.loads(other.body)["priority"] == 1


def test_gotify_and_homeassistant_bodies() -> None:
    message = EventMessage("start", event("glass_break"))
    gotify = json.loads(wf.render_request(message, "gotify", "http://g/message?token=t").body)
    assert gotify["priority"] == 8 and gotify["title"] == "Glass breaking"
    assert gotify["extras"]["harken::event"]["id"] == "e1"
    ha = json.loads(wf.render_request(message, "homeassistant", "http://ha/api/webhook/x").body)
    assert ha["class"] == "glass_break" and ha["source"] == "kitchen" and ha["phase"] == "start"
    assert ha["event_id"] == "e1" and ha["delivery_id"] == "e1-start"


def test_signature_is_hmac_sha256_of_the_exact_body() -> None:
    rendered = wf.render_request(EventMessage("start", event()), "generic", "http://x/")
    headers = wf.request_headers(
        rendered, "s3cret", {"Idempotency-Key": "mine", "X-A": "1"}, "start"
    )
    expected = hmac.new(b"s3cret", rendered.body.encode(), hashlib.sha256).hexdigest()
    assert headers["X-Harken-Signature"] == f"sha256={expected}"
    assert (
        headers["Idempotency-Key"] == headers["X-Harken-Delivery"] == "e1-start"
    )  # not overridable
    assert headers["X-A"] == "1" and headers["X-Harken-Event"] == "start"
    assert wf.verify("s3cret", rendered.body_bytes(), headers["X-Harken-Signature"])
    assert not wf.verify("s3cret", rendered.body_bytes() + b" ", headers["X-Harken-Signature"])
    assert not wf.verify("other", rendered.body_bytes(), headers["X-Harken-Signature"])
    assert "X-Harken-Signature" not in wf.request_headers(rendered, None)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "delivered"),
        (204, "delivered"),
        (301, "permanent"),
        (400, "permanent"),
        (401, "permanent"),
        (404, "permanent"),
        (408, "retry"),
        (429, "retry"),
        (500, "retry"),
        (503, "retry"),
    ],
)
def test_classify(status: int, outcome: str) -> None:
    assert wf.classify(status) == outcome


def test_backoff_doubles_up_to_the_cap_with_bounded_jitter() -> None:
    schedule = [wf.backoff_s(n, 1.0, 30.0, 0.5, 0.0) for n in range(1, 8)]
    assert schedule == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    for n in range(1, 8):
        jittered = wf.backoff_s(n, 1.0, 30.0, 0.5, 0.999)
        assert schedule[n - 1] * 0.5 <= jittered <= schedule[n - 1]
    assert wf.backoff_s(10_000, 1.0, 30.0, 0.0, 0.5) == 30.0  # no overflow on old items


def test_retry_after_seconds_and_http_date() -> None:
    now = T0
    assert wf.parse_retry_after("7", now) == 7.0
    assert (
        wf.parse_retry_after(format_datetime(now + timedelta(seconds=90), usegmt=True), now) == 90.0
    )
    assert (
        wf.parse_retry_after(format_datetime(now - timedelta(seconds=90), usegmt=True), now) == 0.0
    )
    for junk in (None, "", "soon", "-3"):
        assert wf.parse_retry_after(junk, now) is None


def test_redact_url_hides_tokens_and_credentials() -> None:
    assert (
        wf.redact_url("https://u:p@g.lan:8443/message?token=abc") == "https://g.lan:8443/message?…"
    )
    assert wf.redact_url("https://ntfy.sh/topic") == "https://ntfy.sh/topic"


def test_filter_by_class_and_transition() -> None:
    f = wf.NotifyFilter(["smoke_alarm"], ["start"], 0.0)
    e = event()
    assert f.decide(EventMessage("start", e))
    assert not f.decide(EventMessage("end", ended(e)))
    assert not f.decide(EventMessage("start", event("baby_cry", event_id="e2")))
    both = wf.NotifyFilter(None, ["start", "end"], 0.0)
    assert both.decide(EventMessage("start", e)) and both.decide(EventMessage("end", ended(e)))


def test_cooldown_holds_back_a_class_and_its_end_but_not_other_classes() -> None:
    f = wf.NotifyFilter(None, ["start", "end"], 60.0)
    first, second, third = (
        event(at_s=0, event_id="a"),
        event(at_s=30, event_id="b"),
        event(at_s=61, event_id="c"),
    )
    assert f.decide(EventMessage("start", first))
    assert not f.decide(EventMessage("start", second)) and f.last_was_cooldown
    assert f.decide(EventMessage("start", event("baby_cry", at_s=31, event_id="x")))
    assert f.decide(EventMessage("end", ended(first)))
    assert not f.decide(EventMessage("end", ended(second)))  # its start was held back
    assert f.decide(EventMessage("start", third))  # 61 s after the last notified start
