"""Home Assistant discovery payloads and command parsing (pure functions, no broker)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub

from service.events import EventMessage, EventRecord, utc_now
from service.sinks import ha_discovery as ha
from tests.conftest import require

try:
    import jinja2
except ImportError:  # pragma: no cover - the [dev] extra installs it
    jinja2 = None  # type: ignore[assignment]

CLASSES = ["baby_cry", "smoke_alarm", "glass_break"]
TOPICS = ha.Topics("harken", "kitchen", "homeassistant")
DEVICE = ha.DeviceInfo(
    node_id="kitchen",
    sw_version="0.1.0",
    model_version="harken-cnn 3",
    configuration_url="http://harken.lan:8080",
)

# What Home Assistant's MQTT schemas require of each component we publish (its documentation:
# "Required" options), plus what discovery needs to attach an entity to a device.
REQUIRED = {
    "binary_sensor": {"state_topic"},
    "sensor": {"state_topic"},
    "event": {"state_topic", "event_types"},
    "switch": {"command_topic"},
    "number": {"command_topic"},
    "button": {"command_topic"},
}


def configs() -> dict[str, dict]:
    return ha.discovery_configs(TOPICS, DEVICE, CLASSES, snooze_minutes=10, level_interval_s=5)


def test_every_discovery_payload_is_json_with_the_fields_home_assistant_requires() -> None:
    found = configs()
    by_component: dict[str, int] = {}
    for topic, config in found.items():
        prefix, component, node, object_id, last = topic.split("/")
        assert (prefix, node, last) == ("homeassistant", "kitchen", "config")
        by_component[component] = by_component.get(component, 0) + 1
        decoded = json.loads(ha.dumps(config))  # what goes on the wire
        assert REQUIRED[component] <= decoded.keys(), (topic, REQUIRED[component] - decoded.keys())
        assert decoded["unique_id"] == f"harken_kitchen_{object_id}"
        assert decoded["availability_topic"] == "harken/kitchen/availability"
        assert decoded["device"]["identifiers"] and decoded["origin"]["name"] == "harken"
        assert decoded["name"]
    assert by_component == {
        "binary_sensor": 3,
        "event": 3,
        "switch": 3,
        "number": 3,
        "button": 3,
        "sensor": 1,
    }


def test_one_shared_device_block_with_model_and_version_and_unique_ids() -> None:
    found = configs()
    devices = {json.dumps(c["device"], sort_keys=True) for c in found.values()}
    assert len(devices) == 1
    device = found[TOPICS.discovery("sensor", "level")]["device"]
    assert (
        device["model"]
        and "0.1.0" in device["sw_version"]
        and "harken-cnn 3" in device["sw_version"]
    )
    assert device["configuration_url"] == "http://harken.lan:8080"
    unique_ids = [c["unique_id"] for c in found.values()]
    assert len(set(unique_ids)) == len(unique_ids)
    assert all("kitchen" in uid for uid in unique_ids)
    # Another node on the same broker gets other ids and another device.
    other = ha.discovery_configs(
        ha.Topics("harken", "nursery", "homeassistant"),
        ha.DeviceInfo("nursery", "0.1.0", "m"),
        CLASSES,
        10,
        5,
    )
    assert not {c["unique_id"] for c in other.values()} & set(unique_ids)


def test_binary_sensor_device_classes_and_topics() -> None:
    found = configs()
    expected = {"smoke_alarm": "smoke", "baby_cry": "sound", "glass_break": "safety"}
    for name, device_class in expected.items():
        sensor = found[f"homeassistant/binary_sensor/kitchen/{name}/config"]
        assert sensor["device_class"] == device_class
        assert sensor["state_topic"] == f"harken/kitchen/{name}/state"
        assert sensor["json_attributes_topic"] == f"harken/kitchen/{name}/attributes"
        assert (sensor["payload_on"], sensor["payload_off"]) == ("ON", "OFF")
    switch = found["homeassistant/switch/kitchen/smoke_alarm_enabled/config"]
    assert switch["command_topic"] == "harken/kitchen/smoke_alarm/enabled/set"
    assert switch["state_topic"] == "harken/kitchen/smoke_alarm/enabled"
    number = found["homeassistant/number/kitchen/smoke_alarm_sensitivity/config"]
    assert (number["min"], number["max"]) == (0.0, 1.0) and 0 < number["step"] <= 0.1
    button = found["homeassistant/button/kitchen/smoke_alarm_snooze/config"]
    assert button["payload_press"] == "PRESS" and "10 min" in button["name"]
    level = found["homeassistant/sensor/kitchen/level/config"]
    assert level["state_topic"] == "harken/kitchen/level" and level["unit_of_measurement"] == "dBFS"
    assert level["expire_after"] >= 15


def _message(phase: str, class_name: str) -> dict:
    now = utc_now()
    event = EventRecord(
        id="e1",
        source="kitchen",
        class_name=class_name,
        start_s=1.0,
        detected_s=1.2,
        started_at=now,
        detected_at=now,
        score=0.8,
        model_version="3",
    )
    if phase == "end":
        event = event.ended(end_s=4.0, ended_at=now, peak_score=0.95, mean_score=0.9, flicker=0)
    return EventMessage(phase, event).to_dict()  # type: ignore[arg-type]


def test_event_entity_template_picks_its_class_from_the_shared_events_topic() -> None:
    require(jinja2 is not None, "python package jinja2 (the [dev] extra)")
    environment = jinja2.Environment()
    environment.filters["to_json"] = json.dumps  # Home Assistant's filter of that name

    def render(class_name: str, message: dict) -> str:
        config = configs()[f"homeassistant/event/kitchen/{class_name}_event/config"]
        assert config["state_topic"] == "harken/kitchen/events"
        assert config["event_types"] == ["start", "end"]
        return environment.from_string(config["value_template"]).render(value_json=message)

    start = json.loads(render("smoke_alarm", _message("start", "smoke_alarm")))
    assert start["event_type"] == "start" and start["event_id"] == "e1" and start["score"] == 0.8
    end = json.loads(render("smoke_alarm", _message("end", "smoke_alarm")))
    assert end["event_type"] == "end" and end["peak_score"] == 0.95
    # Another class's message renders to {}, which Home Assistant ignores.
    assert render("smoke_alarm", _message("start", "baby_cry")) == "{}"


def test_state_attributes_carry_score_since_event_id_and_clip_url() -> None:
    message = _message("start", "smoke_alarm")
    control = {"enabled": True, "sensitivity": 0.5, "snoozed_until": None}
    base = ha.clip_base_url(True, "127.0.0.1", 8080, None, "box")
    attributes = ha.state_attributes(
        "smoke_alarm", True, message["started_at"], message, control, base
    )
    assert attributes["state"] == "ON" and attributes["event_id"] == "e1"
    assert attributes["score"] == 0.8 and attributes["since"] == message["started_at"]
    assert attributes["clip_url"] == "http://127.0.0.1:8080/api/events/e1/clip.wav"
    ended = _message("end", "smoke_alarm")
    attributes = ha.state_attributes("smoke_alarm", False, ended["ended_at"], ended, control, None)
    assert (
        attributes["state"] == "OFF"
        and attributes["score"] == 0.95
        and attributes["clip_url"] is None
    )
    idle = ha.state_attributes(
        "smoke_alarm", False, "2026-01-01T00:00:00.000Z", None, control, base
    )
    assert idle["event_id"] is None and idle["clip_url"] is None


def test_clip_base_url() -> None:
    assert ha.clip_base_url(False, "127.0.0.1", 8080, None, "box") is None
    assert ha.clip_base_url(True, "0.0.0.0", 8080, None, "box") == "http://box:8080"
    assert ha.clip_base_url(True, "::1", 9000, None, "box") == "http://[::1]:9000"
    assert (
        ha.clip_base_url(False, "127.0.0.1", 8080, "https://harken.lan/", "box")
        == "https://harken.lan"
    )


def test_command_topics_parse_and_reject() -> None:
    assert TOPICS.parse_command("harken/kitchen/smoke_alarm/enabled/set") == (
        "smoke_alarm",
        "enabled",
    )
    assert TOPICS.parse_command("harken/kitchen/baby_cry/snooze/set") == ("baby_cry", "snooze")
    for topic in (
        "harken/kitchen/smoke_alarm/volume/set",
        "harken/other/smoke_alarm/enabled/set",
        "harken/kitchen/smoke_alarm/enabled",
        "harken/kitchen/a/b/enabled/set",
    ):
        with pytest.raises(ha.CommandError):
            TOPICS.parse_command(topic)


def test_command_payloads() -> None:
    assert ha.parse_enabled(b"ON") is True and ha.parse_enabled(b" off ") is False
    assert ha.parse_enabled(b"true") is True and ha.parse_enabled(b"0") is False
    assert ha.parse_sensitivity(b"0.25") == 0.25 and ha.parse_sensitivity(b"1") == 1.0
    assert ha.parse_snooze(b"PRESS", 10) == 10 and ha.parse_snooze(b"30", 10) == 30
    assert ha.parse_snooze(b"cancel", 10) == 0 and ha.parse_snooze(b"0", 10) == 0
    bad = [
        (ha.parse_enabled, b"yes please"),
        (ha.parse_enabled, b""),
        (ha.parse_sensitivity, b"-0.1"),
        (ha.parse_sensitivity, b"inf"),
        (ha.parse_sensitivity, b"nan"),
        (ha.parse_sensitivity, b"1e400"),
        (ha.parse_snooze, b"-1"),
        (ha.parse_snooze, b"soon"),
        (ha.parse_enabled, b"\xc3\x28"),
        (ha.parse_sensitivity, b"0" * 100),
    ]
    for parse, payload in bad:
        with pytest.raises(ha.CommandError):
            parse(payload, 10) if parse is ha.parse_snooze else parse(payload)


@given(st.binary(max_size=200))
def test_garbage_payloads_only_ever_raise_command_error(payload: bytes) -> None:
    for parse in (ha.parse_enabled, ha.parse_sensitivity, lambda p: ha.parse_snooze(p, 10)):
        try:
            value = parse(payload)
        except ha.CommandError:
            continue
        assert value is not None and (isinstance(value, bool) or math.isfinite(value))


# --------------------------------------------------------------------------- several sources
SOURCES = ["nursery", "living_room"]


def source_configs() -> dict[str, dict]:
    return ha.discovery_configs(
        TOPICS, DEVICE, CLASSES, snooze_minutes=10, level_interval_s=5, sources=SOURCES
    )


def test_only_two_or_more_sources_get_entities_of_their_own() -> None:
    assert ha.entity_sources([]) == [] and ha.entity_sources(["default"]) == []
    assert ha.entity_sources(SOURCES) == SOURCES
    assert ha.source_label("living_room") == "Living room" and ha.source_label("Cam-2A") == "Cam-2A"


def test_per_source_entities_name_the_room_and_keep_the_per_class_ones_unchanged() -> None:
    found = source_configs()
    # The "any source" entities are exactly those of a node without per-source entities.
    assert {t: c for t, c in found.items() if t in configs()} == configs()
    added = {t: c for t, c in found.items() if t not in configs()}
    assert len(added) == len(SOURCES) * (len(CLASSES) + 1)
    expected = {"smoke_alarm": "smoke", "baby_cry": "sound", "glass_break": "safety"}
    for source in SOURCES:
        for name, device_class in expected.items():
            sensor = added.pop(f"homeassistant/binary_sensor/kitchen/{source}-{name}/config")
            assert sensor["device_class"] == device_class
            assert sensor["state_topic"] == f"harken/kitchen/{source}/{name}/state"
            assert sensor["json_attributes_topic"] == f"harken/kitchen/{source}/{name}/attributes"
            assert (sensor["payload_on"], sensor["payload_off"]) == ("ON", "OFF")
            assert sensor["unique_id"] == f"harken_kitchen_{source}-{name}"
        level = added.pop(f"homeassistant/sensor/kitchen/{source}-level/config")
        assert level["state_topic"] == f"harken/kitchen/{source}/level"
        assert level["unit_of_measurement"] == "dBFS" and level["expire_after"] >= 15
    assert added == {}
    names = {c["name"] for c in found.values()}
    assert {"Nursery baby cry", "Living room smoke alarm", "Nursery sound level"} <= names
    for topic, config in found.items():
        component = topic.split("/")[1]
        decoded = json.loads(ha.dumps(config))
        assert REQUIRED[component] <= decoded.keys()
        assert decoded["availability_topic"] == "harken/kitchen/availability"
    unique_ids = [c["unique_id"] for c in found.values()]
    assert len(set(unique_ids)) == len(unique_ids)


def test_per_source_topics_collide_with_nothing_and_are_no_commands() -> None:
    # A source may even be named like a class or a topic of the node.
    sources = ["smoke_alarm", "level", "events", "availability", "nursery"]
    found = ha.discovery_configs(TOPICS, DEVICE, CLASSES, 10, 5, sources=sources)
    assert len(found) == len(CLASSES) * 5 + 1 + len(sources) * (len(CLASSES) + 1)
    states = [c[k] for c in found.values() for k in ("state_topic", "json_attributes_topic") if k in c]
    shared = [t for t in states if t == TOPICS.events]  # the event entities share the events topic
    assert len(set(states)) == len(states) - len(shared) + 1
    for source in sources:
        for name in CLASSES:
            with pytest.raises(ha.CommandError):
                TOPICS.parse_command(TOPICS.source_state(source, name))
            assert not topic_matches_sub(TOPICS.command_filter, TOPICS.source_state(source, name))
            assert not topic_matches_sub(TOPICS.command_filter, TOPICS.source_attributes(source, name))


def test_per_source_attributes_name_the_source_before_any_event() -> None:
    idle = ha.state_attributes("smoke_alarm", False, "2026-01-01T00:00:00.000Z", None, None, None, source="nursery")
    assert idle["source"] == "nursery" and idle["event_id"] is None
    assert ha.state_attributes("smoke_alarm", False, None, None, None, None)["source"] is None


def test_discovery_topics_of_this_node_and_stale_state_topics() -> None:
    assert topic_matches_sub(TOPICS.discovery_filter, TOPICS.discovery("binary_sensor", "nursery-baby_cry"))
    assert TOPICS.is_discovery("homeassistant/binary_sensor/kitchen/nursery-baby_cry/config")
    for topic in (
        "homeassistant/binary_sensor/other/nursery-baby_cry/config",
        "homeassistant/binary_sensor/kitchen/nursery-baby_cry/state",
        "homeassistant/status",
        "harken/kitchen/smoke_alarm/state",
    ):
        assert not TOPICS.is_discovery(topic)
    in_use = ha.retained_topics(configs())
    assert TOPICS.events in in_use and TOPICS.state("smoke_alarm") in in_use
    stale = source_configs()["homeassistant/binary_sensor/kitchen/nursery-smoke_alarm/config"]
    assert ha.stale_state_topics(ha.dumps(stale).encode(), TOPICS, in_use) == [
        "harken/kitchen/nursery/smoke_alarm/state",
        "harken/kitchen/nursery/smoke_alarm/attributes",
    ]
    # Never a topic in use (the shared events topic), another node's, or anything from garbage.
    event = configs()["homeassistant/event/kitchen/smoke_alarm_event/config"]
    assert ha.stale_state_topics(ha.dumps(event).encode(), TOPICS, in_use) == []
    foreign = {"state_topic": "harken/other/nursery/smoke_alarm/state", "json_attributes_topic": 3}
    assert ha.stale_state_topics(ha.dumps(foreign).encode(), TOPICS, in_use) == []
    huge = ha.dumps({**stale, "padding": "x" * ha.MAX_CONFIG_BYTES}).encode()
    for garbage in (b"", b"\xff\xfe", b"[1, 2]", b"not json", b"null", huge):
        assert ha.stale_state_topics(garbage, TOPICS, in_use) == []
