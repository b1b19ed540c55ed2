"""Home Assistant MQTT discovery: topics, discovery payloads, state attributes, command parsing.

Pure functions and dataclasses only (no network, no clock): the MQTT adapter in
`service/sinks/mqtt.py` publishes what these build. Topics of one harken node all live
under ``<topic_prefix>/<node_id>/``:

- ``availability``                 online / offline, retained, also the last will
- ``events``                       one JSON object per event start and end (QoS 1)
- ``level``                        loudest block level over the interval, dBFS
- ``<class>/state``                ON while an event of the class is open, retained
- ``<class>/attributes``           JSON attributes of that binary sensor, retained
- ``<class>/enabled``              ON / OFF (the enable switch), retained
- ``<class>/sensitivity``          0..1 (the sensitivity number), retained
- ``<class>/enabled/set``, ``<class>/sensitivity/set``, ``<class>/snooze/set``  commands

With two or more sources, each source also gets its own entities (the per-class ones above
stay the "any source" sensors):

- ``<source>/<class>/state``       ON while an event of the class is open in that source, retained
- ``<source>/<class>/attributes``  JSON attributes of that binary sensor, retained
- ``<source>/level``               that source's loudest block level over the interval, dBFS

Discovery configs go to ``<discovery_prefix>/<component>/<node_id>/<object_id>/config``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

ONLINE = "online"
OFFLINE = "offline"
ON = "ON"
OFF = "OFF"
PRESS = "PRESS"

#: Home Assistant binary_sensor device classes of the known sound classes; others get "sound".
DEVICE_CLASSES: dict[str, str] = {
    "smoke_alarm": "smoke",
    "baby_cry": "sound",
    "glass_break": "safety",
}
ICONS: dict[str, str] = {
    "smoke_alarm": "mdi:smoke-detector-alert",
    "baby_cry": "mdi:baby-face-outline",
    "glass_break": "mdi:window-shutter-alert",
}
#: Event types of the per-class `event` entities: the phases of harken's event messages.
EVENT_TYPES = ("start", "end")
SENSITIVITY_STEP = 0.05
#: Longest command payload worth parsing; anything longer is garbage by construction.
MAX_COMMAND_BYTES = 64
#: Longest left-over discovery config worth reading for its state topics (ours are < 2 KiB).
MAX_CONFIG_BYTES = 16384

CommandKind = Literal["enabled", "sensitivity", "snooze"]
COMMAND_KINDS: tuple[CommandKind, ...] = ("enabled", "sensitivity", "snooze")


class CommandError(ValueError):
    """A command payload or topic that harken ignores; the message says why."""


@dataclass(frozen=True)
class Topics:
    """Every topic of one harken node."""

    topic_prefix: str
    node_id: str
    discovery_prefix: str

    @property
    def base(self) -> str:
        return f"{self.topic_prefix}/{self.node_id}"

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    @property
    def level(self) -> str:
        return f"{self.base}/level"

    @property
    def ha_status(self) -> str:
        """Where Home Assistant announces `online` after it (re)starts."""
        return f"{self.discovery_prefix}/status"

    @property
    def command_filter(self) -> str:
        """One subscription for every command topic (class and kind are parsed, then checked)."""
        return f"{self.base}/+/+/set"

    def state(self, class_name: str) -> str:
        return f"{self.base}/{class_name}/state"

    def attributes(self, class_name: str) -> str:
        return f"{self.base}/{class_name}/attributes"

    def control_state(self, class_name: str, kind: Literal["enabled", "sensitivity"]) -> str:
        return f"{self.base}/{class_name}/{kind}"

    def command(self, class_name: str, kind: CommandKind) -> str:
        return f"{self.base}/{class_name}/{kind}/set"

    def source_state(self, source: str, class_name: str) -> str:
        return f"{self.base}/{source}/{class_name}/state"

    def source_attributes(self, source: str, class_name: str) -> str:
        return f"{self.base}/{source}/{class_name}/attributes"

    def source_level(self, source: str) -> str:
        return f"{self.base}/{source}/level"

    def discovery(self, component: str, object_id: str) -> str:
        return f"{self.discovery_prefix}/{component}/{self.node_id}/{object_id}/config"

    @property
    def discovery_filter(self) -> str:
        """Every discovery config of this node: subscribing to it on connect shows the retained
        ones an earlier run left, so that configs of removed sources can be cleared."""
        return f"{self.discovery_prefix}/+/{self.node_id}/+/config"

    def is_discovery(self, topic: str) -> bool:
        """Whether `topic` is a discovery config topic of this node."""
        prefix = self.discovery_prefix + "/"
        parts = topic[len(prefix) :].split("/") if topic.startswith(prefix) else []
        return len(parts) == 4 and parts[1] == self.node_id and parts[3] == "config"

    def parse_command(self, topic: str) -> tuple[str, CommandKind]:
        """`harken/node/smoke_alarm/enabled/set` -> ("smoke_alarm", "enabled")."""
        prefix = self.base + "/"
        parts = topic[len(prefix) :].split("/") if topic.startswith(prefix) else []
        if len(parts) != 3 or parts[2] != "set" or parts[1] not in COMMAND_KINDS:
            raise CommandError(f"not a command topic: {topic!r}")
        return parts[0], parts[1]  # type: ignore[return-value]


@dataclass(frozen=True)
class DeviceInfo:
    """What Home Assistant shows about this harken node."""

    node_id: str
    sw_version: str
    model_version: str
    model: str = "harken sound-event monitor"
    manufacturer: str = "harken"
    configuration_url: str | None = None

    def block(self) -> dict[str, Any]:
        """The one `device` block every entity of the node shares."""
        block: dict[str, Any] = {
            "identifiers": [f"harken_{self.node_id}"],
            "name": f"harken {self.node_id}",
            "manufacturer": self.manufacturer,
            "model": self.model,
            "sw_version": f"{self.sw_version} (model {self.model_version})",
        }
        if self.configuration_url:
            block["configuration_url"] = self.configuration_url
        return block

    def origin(self) -> dict[str, Any]:
        """The `origin` block: which software published the discovery message."""
        return {"name": "harken", "sw_version": self.sw_version}


def pretty(class_name: str) -> str:
    """`smoke_alarm` -> `Smoke alarm`."""
    return class_name.replace("_", " ").capitalize()


def source_label(source: str) -> str:
    """`living_room` -> `Living room`; unlike `pretty`, the rest keeps its case (`Cam-2A`)."""
    text = source.replace("_", " ")
    return text[:1].upper() + text[1:]


def source_object_id(source: str, what: str) -> str:
    """Object id of a per-source entity: `nursery-baby_cry`, `nursery-level`.

    Source names and class names are `[A-Za-z0-9_-]`; class names are snake_case, so the
    last `-` separates them and no per-source id equals a per-class one (which have no `-`).
    """
    return f"{source}-{what}"


def entity_sources(source_names: Sequence[str]) -> list[str]:
    """The sources that get entities of their own: none with a single source, whose entities
    would only repeat the per-class ones, otherwise all of them."""
    return list(source_names) if len(source_names) > 1 else []


def event_value_template(class_name: str) -> str:
    """Jinja template that turns a message of the shared events topic into this class's event.

    Home Assistant ignores an event payload that renders to `{}`, so one events topic feeds
    an `event` entity per class without a second copy of every message.
    """
    return (
        "{% if value_json['class'] == '" + class_name + "' %}"
        "{{ {'event_type': value_json.phase, 'event_id': value_json.id,"
        " 'source': value_json.source, 'score': value_json.score,"
        " 'peak_score': value_json.peak_score,"
        " 'started_at': value_json.started_at, 'ended_at': value_json.ended_at} | to_json }}"
        "{% else %}{}{% endif %}"
    )


def discovery_configs(
    topics: Topics,
    device: DeviceInfo,
    class_names: Iterable[str],
    snooze_minutes: float,
    level_interval_s: float,
    sources: Sequence[str] = (),
) -> dict[str, dict[str, Any]]:
    """Every retained discovery config of the node, keyed by its discovery topic.

    `sources`: the sources that get a binary sensor per class and a level sensor of their own
    (pass `entity_sources(all_source_names)`).
    """
    common = {
        "availability_topic": topics.availability,
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
        "device": device.block(),
        "origin": device.origin(),
    }
    uid = f"harken_{topics.node_id}"
    configs: dict[str, dict[str, Any]] = {}

    def add(component: str, object_id: str, config: dict[str, Any]) -> None:
        configs[topics.discovery(component, object_id)] = {
            "unique_id": f"{uid}_{object_id}",
            **config,
            **common,
        }

    for name in class_names:
        label = pretty(name)
        add(
            "binary_sensor",
            name,
            {
                "name": label,
                "state_topic": topics.state(name),
                "payload_on": ON,
                "payload_off": OFF,
                "device_class": DEVICE_CLASSES.get(name, "sound"),
                "json_attributes_topic": topics.attributes(name),
                "icon": ICONS.get(name, "mdi:ear-hearing"),
            },
        )
        add(
            "event",
            f"{name}_event",
            {
                "name": f"{label} event",
                "state_topic": topics.events,
                "value_template": event_value_template(name),
                "event_types": list(EVENT_TYPES),
                "qos": 1,
                "icon": ICONS.get(name, "mdi:ear-hearing"),
            },
        )
        add(
            "switch",
            f"{name}_enabled",
            {
                "name": f"{label} detection",
                "command_topic": topics.command(name, "enabled"),
                "state_topic": topics.control_state(name, "enabled"),
                "payload_on": ON,
                "payload_off": OFF,
                "entity_category": "config",
                "icon": "mdi:ear-hearing",
            },
        )
        add(
            "number",
            f"{name}_sensitivity",
            {
                "name": f"{label} sensitivity",
                "command_topic": topics.command(name, "sensitivity"),
                "state_topic": topics.control_state(name, "sensitivity"),
                "min": 0.0,
                "max": 1.0,
                "step": SENSITIVITY_STEP,
                "mode": "slider",
                "entity_category": "config",
                "icon": "mdi:tune-vertical",
            },
        )
        add(
            "button",
            f"{name}_snooze",
            {
                "name": f"Snooze {label.lower()} {snooze_minutes:g} min",
                "command_topic": topics.command(name, "snooze"),
                "payload_press": PRESS,
                "icon": "mdi:bell-sleep",
            },
        )
    level = {
        "unit_of_measurement": "dBFS",
        "state_class": "measurement",
        "suggested_display_precision": 1,
        # A level older than a few intervals is shown as unavailable instead of frozen.
        "expire_after": max(60, math.ceil(3 * level_interval_s)),
        "icon": "mdi:volume-high",
    }
    add("sensor", "level", {"name": "Sound level", "state_topic": topics.level, **level})
    for source in sources:
        room = source_label(source)
        for name in class_names:
            add(
                "binary_sensor",
                source_object_id(source, name),
                {
                    "name": f"{room} {pretty(name).lower()}",
                    "state_topic": topics.source_state(source, name),
                    "payload_on": ON,
                    "payload_off": OFF,
                    "device_class": DEVICE_CLASSES.get(name, "sound"),
                    "json_attributes_topic": topics.source_attributes(source, name),
                    "icon": ICONS.get(name, "mdi:ear-hearing"),
                },
            )
        add(
            "sensor",
            source_object_id(source, "level"),
            {"name": f"{room} sound level", "state_topic": topics.source_level(source), **level},
        )
    return configs


def retained_topics(configs: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """Every topic the configs point Home Assistant at (states, attributes, commands, events)."""
    keys = ("state_topic", "json_attributes_topic", "command_topic", "availability_topic")
    return {str(c[k]) for c in configs.values() for k in keys if k in c}


def stale_state_topics(config_payload: bytes, topics: Topics, in_use: set[str]) -> list[str]:
    """The retained state and attribute topics a stale discovery config (one this run does not
    publish, e.g. of a source removed from the config) points at and this run does not use:
    clearing them leaves nothing of the removed entity on the broker. Garbage gives []."""
    if len(config_payload) > MAX_CONFIG_BYTES:
        return []
    try:
        config = json.loads(config_payload)
    except (ValueError, UnicodeDecodeError):
        return []
    if not isinstance(config, dict):
        return []
    found = []
    for key in ("state_topic", "json_attributes_topic"):
        topic = config.get(key)
        # Only harken's own topics of this node, and never one that is in use (e.g. events).
        if isinstance(topic, str) and topic.startswith(topics.base + "/") and topic not in in_use:
            found.append(topic)
    return found


def clip_base_url(
    api_enabled: bool, api_host: str, api_port: int, public_url: str | None, hostname: str
) -> str | None:
    """Base URL of the API as Home Assistant reaches it, or None when no API serves clips."""
    if public_url:
        return public_url.rstrip("/")
    if not api_enabled:
        return None
    # A wildcard listen address is not a place to connect to: name the machine instead.
    host = hostname if api_host in ("0.0.0.0", "::", "") else api_host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{api_port}"


def state_attributes(
    class_name: str,
    on: bool,
    since: str | None,
    event: Mapping[str, Any] | None,
    control: Mapping[str, Any] | None,
    clip_base: str | None,
    source: str | None = None,
) -> dict[str, Any]:
    """JSON attributes of a class's binary sensor.

    `event` is the open event (state ON) or the last one (state OFF), as
    `EventRecord.to_dict()`; `since` is when the state last changed. `source` is given for a
    per-source sensor, whose `source` attribute then names it even before its first event.
    """
    attributes: dict[str, Any] = {
        "class": class_name,
        "state": ON if on else OFF,
        "since": since,
        "event_id": None,
        "score": None,
        "source": source,
        "started_at": None,
        "ended_at": None,
        "clip_url": None,
    }
    if event is not None:
        score = (
            event.get("peak_score") if event.get("peak_score") is not None else event.get("score")
        )
        attributes.update(
            {
                "event_id": event.get("id"),
                "score": score,
                "source": event.get("source"),
                "started_at": event.get("started_at"),
                "ended_at": event.get("ended_at"),
            }
        )
        if clip_base and event.get("id"):
            attributes["clip_url"] = f"{clip_base}/api/events/{event['id']}/clip.wav"
    if control is not None:
        attributes.update(
            {
                "enabled": control.get("enabled"),
                "sensitivity": control.get("sensitivity"),
                "snoozed_until": control.get("snoozed_until"),
            }
        )
    return attributes


# ---------------------------------------------------------------- command payloads
def _text(payload: bytes) -> str:
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError(f"payload of {len(payload)} bytes is too long")
    try:
        return payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CommandError("payload is not UTF-8 text") from None


def parse_enabled(payload: bytes) -> bool:
    """ON/OFF (also true/false, 1/0, case-insensitive)."""
    text = _text(payload).lower()
    if text in ("on", "true", "1"):
        return True
    if text in ("off", "false", "0"):
        return False
    raise CommandError(f"enable expects ON or OFF, got {text[:20]!r}")


def parse_sensitivity(payload: bytes) -> float:
    """A number from 0 to 1."""
    text = _text(payload)
    try:
        value = float(text)
    except ValueError:
        raise CommandError(f"sensitivity expects a number from 0 to 1, got {text[:20]!r}") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise CommandError(f"sensitivity must be between 0 and 1, got {text[:20]!r}")
    return value


def parse_snooze(payload: bytes, default_minutes: float) -> float:
    """Minutes to snooze: PRESS (the button) = the default, a number = that many minutes,
    0 / OFF / CANCEL = end the snooze."""
    text = _text(payload)
    upper = text.upper()
    if upper == PRESS:
        return default_minutes
    if upper in ("OFF", "CANCEL"):
        return 0.0
    try:
        minutes = float(text)
    except ValueError:
        raise CommandError(f"snooze expects PRESS, minutes or CANCEL, got {text[:20]!r}") from None
    if not math.isfinite(minutes) or minutes < 0:
        raise CommandError(f"snooze minutes must be 0 or more, got {text[:20]!r}")
    return minutes


def dumps(payload: Mapping[str, Any]) -> str:
    """Compact JSON, the form every harken MQTT payload takes."""
    return json.dumps(payload, separators=(",", ":"))
