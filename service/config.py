"""The typed configuration tree: YAML file + `HARKEN_…` environment variables.

Built once at start and passed down; there is no module-level settings object. Unknown
keys and bad values are rejected with the dotted path of the offending key, e.g.
``mqtt.port: Input should be a valid integer (got 'abc')``.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "HARKEN_"


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key and the problem."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(Section):
    name: str = Field(
        "default", description="Name of the source, e.g. the room; carried by its events.",
        min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$",
    )
    url: str = Field("mic", description="mic | mic:NAME_OR_INDEX | file:PATH | demo | - (stdin PCM) | url:rtsp://…")
    realtime: bool = Field(
        True, description="Play file sources at real time (the daemon); false = as fast as possible."
    )
    loop: bool = Field(False, description="Loop a file source forever (the demo source always loops).")

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        from service.audio.sources import parse_source_url

        parse_source_url(value)  # raises ValueError naming the problem
        return value


class DecisionOverrides(Section):
    """Per-class overrides of the decision parameters the model ships with."""

    on_threshold: float | None = Field(None, gt=0, le=1, description="Smoothed score that starts an event.")
    off_threshold: float | None = Field(None, ge=0, le=1, description="Smoothed score below which an event ends.")
    smoothing_frames: int | None = Field(None, ge=1, le=500, description="Moving-average length in frames.")
    onset_k: int | None = Field(None, ge=1, description="Frames above on_threshold needed among the last onset_n.")
    onset_n: int | None = Field(None, ge=1, description="Window of the k-of-n onset rule, in frames.")
    min_duration_s: float | None = Field(None, ge=0, description="Minimum duration before an event is published.")
    merge_gap_s: float | None = Field(None, ge=0, description="Gaps shorter than this stay inside one event.")
    cooldown_s: float | None = Field(None, ge=0, description="No new event of the class this long after one ends.")
    onset_lookback_s: float | None = Field(
        None, ge=0, description="An event's onset may reach back this far to a burst too short to publish."
    )
    onset_rise_threshold: float | None = Field(
        None, ge=0, le=1, description="Rise dating: the score the frames before an onset keep to date it earlier.",
    )
    onset_rise_s: float | None = Field(
        None, ge=0, description="Rise dating: how far back an onset may move over the score's rise (0: off)."
    )
    onset_touch_s: float | None = Field(
        None, ge=0,
        description="Touch dating: how far back an onset may move to a frame that touched on_threshold (0: off).",
    )
    onset_touch_threshold: float | None = Field(
        None, gt=0, le=1,
        description="Touch dating: the score a frame must reach to count as touched, where under on_threshold.",
    )
    onset_advance_s: float | None = Field(
        None, ge=0, description="Onset advance: how much earlier than its dated onset an event is reported (0: off).",
    )


class ClassConfig(Section):
    enabled: bool = Field(True, description="Publish events of this class.")
    sensitivity: float = Field(
        0.5, ge=0.0, le=1.0, description="0 = only certain sounds, 0.5 = as tuned, 1 = most sensitive."
    )
    decision: DecisionOverrides = Field(default_factory=DecisionOverrides, description="Decision parameter overrides.")


class DecisionConfig(Section):
    arbitration_margin: float | None = Field(
        0.3, ge=0.0, le=1.0,
        description="A class does not start while another target class scores this much higher; null disables.",
    )


class StoreConfig(Section):
    path: Path | None = Field(None, description="SQLite file; default: harken.db in the user data directory.")
    retention_days: float = Field(30, gt=0, description="Events and clips older than this are pruned.")
    clip_pre_s: float = Field(2.0, ge=0, le=30, description="Audio kept before an event's start in its clip.")
    clip_post_s: float = Field(3.0, ge=0, le=30, description="Audio kept after an event's end in its clip.")


class IngressConfig(Section):
    """Home Assistant ingress: the Supervisor proxies the sidebar panel to harken and has
    already authenticated the user. Only requests whose TCP peer is one of `trusted_proxies`
    are treated that way; every other request still needs `api.token`."""

    enabled: bool = Field(
        False,
        description="Trust requests from the ingress proxy (the Home Assistant add-on turns this on).",
    )
    trusted_proxies: list[str] = Field(
        default_factory=lambda: ["172.30.32.2"], min_length=1,
        description="Addresses or networks of the ingress proxy (the Supervisor: 172.30.32.2).",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network (e.g. 172.30.32.2)") from None
        return value


class ApiConfig(Section):
    enabled: bool = Field(True, description="Serve the REST API, WebSocket and dashboard.")
    host: str = Field("127.0.0.1", description="Listen address; beyond loopback a token is required.")
    port: int = Field(8080, ge=0, le=65535, description="Listen port (0 picks a free one).")
    token: str | None = Field(None, min_length=8, description="Bearer token required by every endpoint but health.")
    max_body_bytes: int = Field(
        65536, ge=1024, le=16 * 1024 * 1024,
        description="Largest request body accepted, in bytes; larger ones are refused with 413.",
    )
    rate_limit_per_s: float | None = Field(
        20.0, gt=0,
        description="Requests per second a client (IP address) may make, sustained; over it: 429 with "
                    "Retry-After. null disables the limit.",
    )
    rate_limit_burst: int = Field(
        200, ge=1, description="Requests a client may make at once before rate_limit_per_s applies."
    )
    ingress: IngressConfig = Field(
        default_factory=IngressConfig, description="Home Assistant ingress (the add-on's sidebar panel)."
    )


class TlsConfig(Section):
    enabled: bool = Field(False, description="Connect to the broker over TLS.")
    ca_file: Path | None = Field(None, description="CA bundle that signs the broker's certificate.")
    cert_file: Path | None = Field(None, description="Client certificate for mutual TLS.")
    key_file: Path | None = Field(None, description="Key of the client certificate.")
    verify: bool = Field(True, description="Verify the broker's certificate and host name.")


class MqttConfig(Section):
    enabled: bool = Field(False, description="Publish to an MQTT broker (Home Assistant).")
    host: str = Field("localhost", description="Broker host.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port.")
    username: str | None = Field(None, description="Broker user name.")
    password: str | None = Field(None, description="Broker password.")
    client_id: str | None = Field(None, description="MQTT client id; default harken-<node_id>.")
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS settings.")
    topic_prefix: str = Field("harken", min_length=1, description="First level of every harken topic.")
    node_id: str = Field("harken", min_length=1, pattern=r"^[A-Za-z0-9_\-]+$",
                         description="Identifies this harken when several share a broker.")
    discovery_prefix: str = Field("homeassistant", min_length=1, description="Home Assistant discovery prefix.")
    qos: Literal[0, 1, 2] = Field(1, description="QoS of event messages.")
    level_interval_s: float = Field(5.0, gt=0, description="How often the sound level is published.")
    keepalive_s: int = Field(30, ge=5, description="MQTT keepalive.")
    reconnect_min_s: float = Field(
        1.0, gt=0, le=3600,
        description="First delay before reconnecting to a lost broker; doubles per failure.",
    )
    reconnect_max_s: float = Field(
        60.0, gt=0, le=3600,
        description="Longest reconnect delay; also the retry interval after refused credentials.",
    )
    snooze_minutes: float = Field(
        10.0, gt=0, le=7 * 24 * 60,
        description="How long the Home Assistant snooze button silences a class.",
    )
    public_url: str | None = Field(
        None, pattern=r"^https?://",
        description="Base URL of harken's API as Home Assistant reaches it, for clip links; "
                    "default http://<api.host>:<api.port> when the API is enabled.",
    )

    @field_validator("topic_prefix", "discovery_prefix")
    @classmethod
    def _plain_topic(cls, value: str) -> str:
        if any(c in value for c in "+#\0") or value.startswith("/") or value.endswith("/"):
            raise ValueError("must be a plain MQTT topic: no + or # wildcards, no leading or trailing /")
        return value

    @model_validator(mode="after")
    def _reconnect_order(self) -> MqttConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError(f"reconnect_max_s ({self.reconnect_max_s}) must be at least "
                             f"reconnect_min_s ({self.reconnect_min_s})")
        return self


class WebhookConfig(Section):
    """One notification target. Its pending deliveries live in the store's outbox under
    `webhook:<name>` (or `webhook:<index>` without a name), so give targets names if you
    reorder them while deliveries may be pending."""

    name: str | None = Field(
        None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$",
        description="Name of the target, for logs, status and `harken notify-test NAME`.",
    )
    url: str = Field(
        ..., pattern=r"^https?://",
        description="Where to POST (ntfy: the topic URL, e.g. https://ntfy.sh/mytopic).",
    )
    format: Literal["generic", "ntfy", "gotify", "homeassistant"] = Field(
        "generic", description="Request body format."
    )
    classes: list[str] | None = Field(
        None, min_length=1, description="Classes to notify; default all."
    )
    on: list[Literal["start", "end"]] = Field(
        default_factory=lambda: ["start"], min_length=1, description="Event transitions to send."
    )
    secret: str | None = Field(
        None, min_length=1, description="HMAC-SHA256 key for the X-Harken-Signature header."
    )
    cooldown_s: float = Field(
        0.0, ge=0, description="Minimum time between notified events of one class (event time)."
    )
    timeout_s: float = Field(10.0, gt=0, le=120, description="Request timeout.")
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra request headers (e.g. an ntfy token)."
    )
    message: dict[str, str] = Field(
        default_factory=dict,
        description="Per-class message template, e.g. {smoke_alarm: 'Smoke alarm in {source}!'}; "
                    "key `default` for every other class.",
    )
    priority: dict[str, int] = Field(
        default_factory=dict, description="Per-class priority override (ntfy 1-5, Gotify 0-10)."
    )
    retry_base_s: float = Field(2.0, gt=0, description="First retry delay; doubles per attempt.")
    retry_max_s: float = Field(
        300.0, gt=0, description="Longest delay between retries (retries never stop)."
    )
    retry_jitter: float = Field(
        0.5, ge=0, le=1, description="Each delay is shortened by a random share up to this."
    )
    retry_after_max_s: float = Field(3600.0, gt=0, description="Cap on a receiver's Retry-After.")

    @model_validator(mode="before")
    @classmethod
    def _yaml_on_key(cls, data: Any) -> Any:
        # YAML 1.1 (PyYAML) reads a bare `on:` key as the boolean true; give it its name back.
        if isinstance(data, dict) and any(key is True for key in data) and "on" not in data:
            data = {("on" if key is True else key): value for key, value in data.items()}
        return data

    @field_validator("message")
    @classmethod
    def _templates(cls, value: dict[str, str]) -> dict[str, str]:
        from service.sinks.webhook_format import check_template

        for class_name, template in value.items():
            try:
                check_template(template)
            except ValueError as exc:
                raise ValueError(f"template for {class_name}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _format_rules(self) -> WebhookConfig:
        from service.sinks.webhook_format import ntfy_endpoint

        if self.format == "ntfy":
            ntfy_endpoint(self.url)  # raises ValueError when the URL names no topic
        low, high = (1, 5) if self.format == "ntfy" else (0, 10)
        for class_name, priority in self.priority.items():
            if self.format not in ("ntfy", "gotify"):
                raise ValueError(f"priority.{class_name}: only ntfy and gotify have priorities")
            if not low <= priority <= high:
                raise ValueError(
                    f"priority.{class_name}: {self.format} priorities are {low}-{high}, "
                    f"got {priority}"
                )
        return self

    def key(self, index: int) -> str:
        """The target's sink name and outbox key."""
        return f"webhook:{self.name if self.name is not None else index}"


class LogConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    json_format: bool = Field(False, alias="json", description="One JSON object per log line.")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Settings(Section):
    """The whole harken configuration."""

    sources: list[SourceConfig] = Field(default_factory=lambda: [SourceConfig()], min_length=1,
                                        description="Audio sources; each has its own decisions.")
    model: Path | None = Field(None, description="Path to a .onnx model, or the file name of a bundled one "
                               "(harken-lite.onnx); default: the bundled model.")
    classes: dict[str, ClassConfig] = Field(default_factory=dict, description="Per-class settings.")
    decision: DecisionConfig = Field(default_factory=DecisionConfig, description="Cross-class decision settings.")
    store: StoreConfig = Field(default_factory=StoreConfig, description="Event store.")
    api: ApiConfig = Field(default_factory=ApiConfig, description="HTTP API and dashboard.")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="MQTT / Home Assistant.")
    webhooks: list[WebhookConfig] = Field(default_factory=list, description="Webhook targets.")
    log: LogConfig = Field(default_factory=LogConfig, description="Logging.")

    @model_validator(mode="after")
    def _unique_sources(self) -> Settings:
        names = [s.name for s in self.sources]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"source names must be unique, repeated: {', '.join(duplicates)}")
        return self

    @model_validator(mode="after")
    def _unique_webhooks(self) -> Settings:
        keys = [target.key(i) for i, target in enumerate(self.webhooks)]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ValueError(f"webhook names must be unique, repeated: {', '.join(duplicates)}")
        return self

    def with_source(self, url: str) -> Settings:
        """The `--source` flag: replace the configured sources with one."""
        name = "demo" if url == "demo" else "default"
        return self.model_copy(update={"sources": [SourceConfig(name=name, url=url)]})


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """HARKEN_MQTT__HOST=x -> {"mqtt": {"host": "x"}}; values parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key in ("HARKEN_CONFIG",):
            continue
        path = [part.lower() for part in key[len(ENV_PREFIX) :].split("__") if part]
        if not path:
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment {key}: {'.'.join(path)} conflicts with another variable")
        node[path[-1]] = value
    return tree


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


#: Keys whose values are secrets: error messages name the key but never echo the value.
SECRET_KEYS = frozenset({"token", "password", "secret", "headers"})


def _is_secret(loc: tuple[int | str, ...]) -> bool:
    # Also the add-on's flat option names: api_token, mqtt_password.
    return any(
        str(part) in SECRET_KEYS or str(part).endswith(("_token", "_password", "_secret")) for part in loc
    )


def describe_errors(error: ValidationError, origin: str) -> str:
    """One line naming every wrong key (secrets' values never shown), prefixed by `origin`."""
    return _describe(error, origin)


#: Given the config's `model:` (None = the bundled model), that model's class names, or
#: None when it cannot be read (the model check then reports that on its own).
ModelClasses = Callable[[Path | None], Sequence[str] | None]


def unknown_class_problems(data: Mapping[str, Any], class_names: Sequence[str]) -> list[str]:
    """Every class name in the raw config the model does not know, as `key: problem` lines.

    Works on the raw mapping, not on Settings, so these problems are reported together
    with any other invalid key instead of only after those are fixed."""
    known = ", ".join(class_names)
    problems = []
    classes = data.get("classes")
    if isinstance(classes, Mapping):
        problems += [f"classes.{name}: the model has no such class (it knows {known})"
                     for name in classes if name not in class_names]
    webhooks = data.get("webhooks")
    for index, target in enumerate(webhooks if isinstance(webhooks, list) else []):
        if not isinstance(target, Mapping):
            continue
        for key in ("classes", "message", "priority"):
            names = target.get(key)
            if not isinstance(names, list | Mapping):
                continue  # a wrong type is reported by the schema
            for name in names:
                if isinstance(name, str) and name not in class_names and not (
                    key == "message" and name == "default"
                ):
                    problems.append(
                        f"webhooks.{index}.{key}: the model has no class {name!r} (it knows {known})"
                    )
    return problems


def _model_class_problems(data: Mapping[str, Any], model_classes: ModelClasses) -> list[str]:
    model = data.get("model")
    if model is not None and not isinstance(model, str | Path):
        return []  # the schema names that problem
    names = model_classes(Path(model) if model else None)
    return [] if names is None else unknown_class_problems(data, names)


def _describe(error: ValidationError | None, origin: str, extra: Sequence[str] = ()) -> str:
    lines = []
    for item in error.errors() if error is not None else []:
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif _is_secret(item["loc"]):
            message += " (value not shown: it is a secret)"
        elif "input" in item and not isinstance(item["input"], dict | list):
            message += f" (got {item['input']!r})"
        lines.append(f"{where}: {message}")
    lines += extra
    return " ".join((f"{origin}: " + "; ".join(lines)).split())  # always one line


def load_settings(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    model_classes: ModelClasses | None = None,
) -> Settings:
    """Read the YAML file (optional) and the environment into one validated Settings.

    With `model_classes`, class names the configured model does not know (`classes:`,
    webhook filters, templates, priorities) are refused too, in the same error as every
    other invalid key."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    origin = "embedded defaults"
    if path is not None:
        origin = str(path)
        config_path = Path(path)
        try:
            text = config_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read config file ({exc})") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = " ".join(str(getattr(exc, "problem", None) or exc).split())  # one line
            raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(loaded).__name__}")
        data = loaded
    env = _env_overrides(environ)
    if env:
        origin += " + environment"
        data = _merge(data, env)
    class_problems = _model_class_problems(data, model_classes) if model_classes else []
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin, class_problems)) from None
    if class_problems:
        raise ConfigError(_describe(None, origin, class_problems))
    return settings
