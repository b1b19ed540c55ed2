"""harken as a Home Assistant add-on: the add-on's options and the Supervisor's MQTT service
mapped onto harken's config.

The Supervisor writes the options the user set in the add-on's Configuration tab to
`/data/options.json` (validated against `schema` in `deploy/home-assistant/harken/config.yaml`)
and gives the add-on a `SUPERVISOR_TOKEN` for its REST API at `http://supervisor`, whose
`/services/mqtt` names the broker that the Mosquitto add-on provides. `addon_settings` is the
one mapping from both onto `Settings`, pure and tested; `read_options` and
`fetch_mqtt_service` are the I/O around it, and `harken addon` (service/cli.py) runs the result.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from service.config import ConfigError, Settings, describe_errors

log = logging.getLogger(__name__)

OPTIONS_PATH = Path("/data/options.json")
#: The add-on's own folder (`map: addon_config`): events database, clips, false-alarm examples.
CONFIG_DIR = Path("/config")
SUPERVISOR_URL = "http://supervisor"
#: `ingress_port` in config.yaml: the port the Supervisor's ingress proxy connects to.
INGRESS_PORT = 8099
#: The Supervisor's address on the hassio network, where ingress requests come from.
INGRESS_PROXY = "172.30.32.2"
#: The classes of the bundled model, each with its own option (enabled, sensitivity).
CLASS_OPTIONS = ("baby_cry", "smoke_alarm", "glass_break")
NAME_PATTERN = r"^[A-Za-z0-9_\-]{1,64}$"


class Option(BaseModel):
    # Unknown keys are an error naming the key, as in harken's own config.
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceOption(Option):
    name: str = Field(..., pattern=NAME_PATTERN, description="Name of the source, e.g. the room.")
    url: str = Field(
        ..., min_length=1,
        description="mic (Home Assistant's audio input) | mic:NAME | file:PATH | url:rtsp://… | demo",
    )

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        from service.audio.sources import parse_source_url

        parse_source_url(value)  # raises ValueError naming the problem
        return value


class ClassOption(Option):
    enabled: bool = Field(True, description="Publish events of this class.")
    sensitivity: float = Field(0.5, ge=0.0, le=1.0, description="0 = only certain sounds, 0.5 = as tuned, 1 = most.")


class WebhookOption(Option):
    name: str | None = Field(None, pattern=NAME_PATTERN, description="Name of the target.")
    url: str = Field(..., pattern=r"^https?://", description="Where to POST (ntfy: the topic URL).")
    format: Literal["generic", "ntfy", "gotify", "homeassistant"] = Field("generic", description="Body format.")
    classes: str | None = Field(
        None, description="Comma-separated classes to notify, e.g. 'smoke_alarm, glass_break'; empty = all."
    )
    on: Literal["start", "end", "start_and_end"] = Field("start", description="Transitions to send.")
    cooldown_s: float = Field(0.0, ge=0, description="Minimum time between notified events of one class.")
    secret: str | None = Field(None, min_length=1, description="HMAC-SHA256 key (X-Harken-Signature).")

    @field_validator("classes")
    @classmethod
    def _class_list(cls, value: str | None) -> str | None:
        if value is None:
            return None
        names = [n.strip() for n in value.split(",") if n.strip()]
        unknown = [n for n in names if n not in CLASS_OPTIONS]
        if unknown:
            raise ValueError(f"unknown class {unknown[0]!r}; known: {', '.join(CLASS_OPTIONS)}")
        return ",".join(names) or None

    def to_config(self) -> dict[str, Any]:
        target: dict[str, Any] = {
            "url": self.url,
            "format": self.format,
            "on": ["start", "end"] if self.on == "start_and_end" else [self.on],
            "cooldown_s": self.cooldown_s,
        }
        if self.name is not None:
            target["name"] = self.name
        if self.classes:
            target["classes"] = self.classes.split(",")
        if self.secret is not None:
            target["secret"] = self.secret
        return target


class AddonOptions(Option):
    """What the add-on's Configuration tab offers; mirrors `options`/`schema` in config.yaml."""

    sources: list[SourceOption] = Field(
        default_factory=lambda: [SourceOption(name="default", url="mic")], min_length=1,
        description="Audio sources; `mic` is Home Assistant's audio input (PulseAudio).",
    )
    baby_cry: ClassOption = Field(default_factory=ClassOption, description="Baby cry detection.")
    smoke_alarm: ClassOption = Field(default_factory=ClassOption, description="Smoke alarm detection.")
    glass_break: ClassOption = Field(default_factory=ClassOption, description="Glass break detection.")
    webhooks: list[WebhookOption] = Field(default_factory=list, description="Phone notifications.")
    mqtt_enabled: bool = Field(True, description="Publish to MQTT (Home Assistant discovery).")
    mqtt_host: str | None = Field(None, min_length=1, description="Broker host; default: the Supervisor's broker.")
    mqtt_port: int | None = Field(None, ge=1, le=65535, description="Broker port.")
    mqtt_username: str | None = Field(None, min_length=1, description="Broker user.")
    mqtt_password: str | None = Field(None, min_length=1, description="Broker password.")
    mqtt_node_id: str = Field("harken", pattern=NAME_PATTERN, description="Identifies this harken on the broker.")
    api_token: str | None = Field(
        None, min_length=8, description="Token for the API from outside the sidebar panel (8+ characters)."
    )
    public_url: str | None = Field(None, pattern=r"^https?://", description="harken's URL for clip links.")
    retention_days: int = Field(30, ge=1, le=3650, description="Events and clips older than this are deleted.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")


@dataclass(frozen=True)
class MqttService:
    """The broker the Supervisor announces (the Mosquitto add-on's login for add-ons)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    ssl: bool = False

    @classmethod
    def from_data(cls, data: Any) -> MqttService:
        """The `data` of `GET /services/mqtt`; ValueError naming what is wrong with it."""
        if not isinstance(data, dict):
            raise ValueError(f"data is {type(data).__name__}, not an object")
        host, port = data.get("host"), data.get("port")
        if not isinstance(host, str) or not host:
            raise ValueError(f"host is {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValueError(f"port is {port!r}")
        username, password = data.get("username"), data.get("password")
        return cls(
            host=host,
            port=port,
            username=username if isinstance(username, str) and username else None,
            password=password if isinstance(password, str) and password else None,
            ssl=data.get("ssl") is True,
        )


def parse_options(options: Mapping[str, Any]) -> AddonOptions:
    """Validate the options; ConfigError with one line naming each wrong option."""
    try:
        return AddonOptions.model_validate(options)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, "add-on options")) from None


def mqtt_config(opts: AddonOptions, service: MqttService | None) -> tuple[dict[str, Any], str]:
    """The `mqtt` section and one line saying which broker and why.

    Without `mqtt_host` the Supervisor's broker is used, and each of port, user and password
    comes from the options when set there, else from the service (TLS as the service says).
    With `mqtt_host` only the options count.
    """
    if not opts.mqtt_enabled:
        return {"enabled": False}, "MQTT off (mqtt_enabled: false)"
    host = opts.mqtt_host or (service.host if service else None)
    if host is None:
        return {"enabled": False}, (
            "MQTT off: no broker (install and start the Mosquitto broker add-on, "
            "or set mqtt_host in the options)"
        )
    from_service = service is not None and opts.mqtt_host is None
    section: dict[str, Any] = {"enabled": True, "host": host, "node_id": opts.mqtt_node_id}
    port = opts.mqtt_port or (service.port if from_service and service else None)
    if port is not None:
        section["port"] = port
    # The Supervisor's login belongs to its broker: never sent to a broker named in the options.
    username = opts.mqtt_username or (service.username if from_service and service else None)
    password = opts.mqtt_password or (service.password if from_service and service else None)
    if username is not None:
        section["username"] = username
    if password is not None:
        section["password"] = password
    if from_service and service and service.ssl:
        section["tls"] = {"enabled": True}
    if opts.public_url:
        section["public_url"] = opts.public_url
    origin = "from the Supervisor" if from_service else "from the options"
    who = f" as {username}" if username else ""
    return section, f"MQTT broker {host}:{section.get('port', 1883)}{who} ({origin})"


def addon_settings(
    options: Mapping[str, Any],
    mqtt_service: MqttService | None,
    *,
    config_dir: Path = CONFIG_DIR,
    port: int = INGRESS_PORT,
    ingress_proxies: tuple[str, ...] = (INGRESS_PROXY,),
) -> tuple[Settings, list[str]]:
    """The one mapping: add-on options (+ the Supervisor's broker) -> harken Settings.

    Returns the settings and the lines worth logging at start. Raises ConfigError with one
    line naming the wrong option.
    """
    opts = parse_options(options)
    mqtt, mqtt_note = mqtt_config(opts, mqtt_service)
    data: dict[str, Any] = {
        "sources": [{"name": s.name, "url": s.url} for s in opts.sources],
        "classes": {
            name: {"enabled": c.enabled, "sensitivity": c.sensitivity}
            for name in CLASS_OPTIONS
            for c in [getattr(opts, name)]
        },
        "store": {"path": str(config_dir / "harken.db"), "retention_days": opts.retention_days},
        # Listens on the add-on's network (the ingress proxy connects from outside the
        # container); without api_token only ingress and loopback are answered.
        "api": {
            "host": "0.0.0.0",
            "port": port,
            "token": opts.api_token,
            "ingress": {"enabled": True, "trusted_proxies": list(ingress_proxies)},
        },
        "mqtt": mqtt,
        "webhooks": [w.to_config() for w in opts.webhooks],
        "log": {"level": opts.log_level},
    }
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, "add-on options")) from None
    sources = ", ".join(f"{s.name} ({s.url})" for s in opts.sources)
    notes = [f"sources: {sources}", mqtt_note]
    if opts.webhooks:
        notes.append(f"{len(opts.webhooks)} webhook target(s)")
    others = ", other clients with api_token" if opts.api_token else " only (no api_token set)"
    notes.append(f"API on port {port}: the sidebar panel through ingress{others}")
    return settings, notes


def read_options(path: Path) -> dict[str, Any]:
    """The options file the Supervisor wrote; ConfigError naming the problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: add-on options not found (is this running as the add-on?)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the add-on options ({exc})") from None
    try:
        options = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if not isinstance(options, dict):
        raise ConfigError(f"{path}: the add-on options must be a JSON object, got {type(options).__name__}")
    return options


def fetch_mqtt_service(
    base_url: str, token: str | None, *, timeout_s: float = 10.0, attempts: int = 3, retry_s: float = 2.0
) -> tuple[MqttService | None, str | None]:
    """Ask the Supervisor for its MQTT broker. Returns (service, None) or (None, why not).

    An answer (broker or "Service not enabled") is final; a Supervisor that cannot be
    reached or answers 5xx is asked again a few times, since add-ons may start while it is busy.
    """
    if not token:
        return None, "no SUPERVISOR_TOKEN in the environment, so no broker from the Supervisor"
    url = base_url.rstrip("/") + "/services/mqtt"
    why = "not asked"
    for attempt in range(attempts):
        if attempt:
            time.sleep(retry_s)
        try:
            response = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s)
        except httpx.HTTPError as exc:
            why = f"the Supervisor at {base_url} cannot be reached ({exc.__class__.__name__}: {exc})"
            continue
        try:
            body = response.json()
        except ValueError:
            body = None
        message = body.get("message") if isinstance(body, dict) else None
        if response.status_code >= 500:
            why = f"the Supervisor answered HTTP {response.status_code}"
            continue
        if response.status_code in (401, 403):
            return None, (
                f"the Supervisor refused the MQTT service query (HTTP {response.status_code}: "
                f"{message or 'no access'}); does config.yaml list services: mqtt:want?"
            )
        if response.status_code != 200 or not isinstance(body, dict) or body.get("result") != "ok":
            # "Service not enabled": no add-on provides MQTT (the Mosquitto add-on is not running).
            return None, f"the Supervisor has no MQTT broker ({message or f'HTTP {response.status_code}'})"
        try:
            return MqttService.from_data(body.get("data")), None
        except ValueError as exc:
            return None, f"the Supervisor's MQTT service data is malformed: {exc}"
    return None, why


def load_addon_settings(
    options_path: Path,
    supervisor_url: str,
    supervisor_token: str | None,
    *,
    config_dir: Path = CONFIG_DIR,
    port: int = INGRESS_PORT,
    ingress_proxies: tuple[str, ...] = (INGRESS_PROXY,),
) -> tuple[Settings, list[str]]:
    """Options file + Supervisor -> Settings (what `harken addon` runs)."""
    options = read_options(options_path)
    opts = parse_options(options)  # a wrong option stops here, before any network call
    service, why = None, None
    if opts.mqtt_enabled and not opts.mqtt_host:
        service, why = fetch_mqtt_service(supervisor_url, supervisor_token)
    settings, notes = addon_settings(
        options, service, config_dir=config_dir, port=port, ingress_proxies=ingress_proxies
    )
    if why and not settings.mqtt.enabled:
        notes.append(f"MQTT: {why}")
    return settings, notes
