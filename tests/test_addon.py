"""The Home Assistant add-on.

- Its repository files (repository.yaml, config.yaml, build.yaml, translations, images,
  Dockerfile) against the keys and types Home Assistant documents (tests/ha_addon_schema.py);
  the add-on's version equal to the package's. No Docker engine: the image's
  download-and-install step runs against a local archive server.
- The one mapping from add-on options (+ the Supervisor's broker) onto harken's config:
  every option, valid and invalid; a wrong option is one line naming it.
- The Supervisor's MQTT service, asked of a local HTTP server that answers like the Supervisor.
- End to end: `harken addon` with that server, a real Mosquitto behind it (with the login the
  server hands out) and Home Assistant's audio (a PulseAudio server) as the default source.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
import yaml

from service.addon import (
    CLASS_OPTIONS,
    AddonOptions,
    MqttService,
    addon_settings,
    fetch_mqtt_service,
    read_options,
)
from service.config import ConfigError
from tests import ha_addon_schema as ha
from tests.conftest import require_program, t3_scene
from tests.mqtt_helpers import Broker, Recorder, free_port

REPO = Path(__file__).resolve().parent.parent
ADDON = REPO / "deploy" / "home-assistant" / "harken"


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return _yaml(ADDON / "config.yaml")


# ----------------------------------------------------------------- repository files


def test_repository_yaml_is_at_the_root_where_the_supervisor_reads_it() -> None:
    # The Supervisor looks for repository.(yaml|json) at the root of the git repository only.
    assert ha.repository_problems(_yaml(REPO / "repository.yaml")) == []


def test_the_addon_is_the_only_config_yaml_in_the_repository() -> None:
    # The Supervisor takes every config.(yaml|yml|json) below the root for an add-on.
    skip = {".git", ".venv", "node_modules", "artifacts", "runs"}
    found = [
        p.relative_to(REPO)
        for p in REPO.rglob("config.*")
        if p.suffix in (".yaml", ".yml", ".json") and not skip & set(p.relative_to(REPO).parts)
    ]
    assert found == [ADDON.relative_to(REPO) / "config.yaml"]


def test_config_yaml_has_documented_keys_and_types(config: dict[str, Any]) -> None:
    assert ha.config_problems(config) == []
    assert config["slug"] == "harken" and set(config["arch"]) == {"amd64", "aarch64"}
    assert config["init"] is False  # the base image's s6-overlay is the init
    assert config["startup"] == "application" and config["boot"] == "auto"
    assert config["audio"] is True and config["services"] == ["mqtt:want"]
    assert config["ingress"] is True and config["ingress_port"] == 8099
    assert config["panel_icon"].startswith("mdi:")
    assert {"type": "addon_config", "read_only": False} in config["map"]


def test_the_schema_checks_catch_mistakes(config: dict[str, Any]) -> None:
    """The checks above can fail: each of these broken copies is refused, naming the key."""
    broken = {
        "version": {"version": None},
        "arch": {"arch": ["amd64", "sparc"]},
        "ingress_port": {"ingress_port": 70000},
        "servises": {"servises": ["mqtt:want"]},
        "services": {"services": ["mqtt:wanted"]},
        "map": {"map": [{"type": "addon_config", "read_only": "no"}]},
        "panel_icon": {"panel_icon": "ear"},
        "watchdog": {"watchdog": "http://localhost:8099/"},
        "schema.log_level": {"schema": {**config["schema"], "log_level": "enum(debug|info)"}},
        "options.retention_days": {"options": {**config["options"], "retention_days": 0}},
        "'colour'": {"options": {**config["options"], "colour": "red"}},
        "'log_level' has no value": {"options": {k: v for k, v in config["options"].items() if k != "log_level"}},
    }
    for key, change in broken.items():
        problems = ha.config_problems({**config, **change})
        assert problems and any(key in p for p in problems), (key, problems)
    lists = {**config, "schema": {**config["schema"], "x": [["str"]]}}
    assert any("list may not hold a list" in p for p in ha.config_problems(lists))
    deep = {**config, "schema": {**config["schema"], "x": [{"a": {"b": "str"}}]}}
    assert any("schema.x[].a: nested deeper than two levels" in p for p in ha.config_problems(deep))


def test_build_yaml_names_home_assistant_base_images() -> None:
    build = _yaml(ADDON / "build.yaml")
    assert ha.build_problems(build) == []
    assert set(build["build_from"]) == {"amd64", "aarch64"}
    for arch, image in build["build_from"].items():
        # Debian, not Alpine: onnxruntime has glibc wheels only.
        assert image == f"ghcr.io/home-assistant/{arch}-base-debian:bookworm"
    assert ha.build_problems({**build, "build_from": {"sparc": "x/y"}}) != []


def test_translations_name_every_option(config: dict[str, Any]) -> None:
    translations = _yaml(ADDON / "translations" / "en.yaml")
    assert ha.translation_problems(translations, config["schema"]) == []
    trimmed = {"configuration": {k: v for k, v in translations["configuration"].items() if k != "api_token"}}
    assert ha.translation_problems(trimmed, config["schema"]) == ["configuration: 'api_token' has no name"]


def test_addon_version_follows_the_package(config: dict[str, Any]) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert config["version"] == version, "set deploy/home-assistant/harken/config.yaml version to pyproject's"
    assert re.search(rf"^## {re.escape(version)}$", (ADDON / "CHANGELOG.md").read_text(), re.M)


def test_project_urls_agree(config: dict[str, Any]) -> None:
    home = _yaml(REPO / "repository.yaml")["url"]
    build = _yaml(ADDON / "build.yaml")
    assert config["url"] == home == build["labels"]["org.opencontainers.image.source"]
    assert build["args"]["HARKEN_SOURCE_URL"] == f"{home}/archive/refs/tags"


def test_docs_describe_every_option(config: dict[str, Any]) -> None:
    docs = (ADDON / "DOCS.md").read_text()
    for option in config["schema"]:
        assert f"`{option}`" in docs, option


def test_icon_and_logo_are_pngs_of_the_documented_sizes() -> None:
    def size(path: Path) -> tuple[int, int]:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")

    assert size(ADDON / "icon.png") == (128, 128)
    assert size(ADDON / "logo.png") == (250, 100)
    # They are drawn by a script; the committed files are what it draws.
    check = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "addon_images.py"), "--check"],
        capture_output=True, text=True, timeout=120,
    )
    assert check.returncode == 0, check.stderr


# ----------------------------------------------------------------- Dockerfile


def _steps(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^(\w+)\s+(.*)$", text, re.M)]


def _install_command(steps: list[tuple[str, str]]) -> str:
    run = next(a for i, a in steps if i == "RUN" and "install.sh" in a)
    found = re.search(r"sh (\S+/deploy/install\.sh \S+ \S+)", run)
    assert found, run
    return found.group(1)


def test_dockerfile_uses_the_base_image_and_the_same_install_script() -> None:
    steps = _steps(ADDON / "Dockerfile")
    assert steps[0] == ("ARG", "BUILD_FROM") and steps[1][0] == "FROM"
    assert steps[1][1] in ("${BUILD_FROM}", "$BUILD_FROM")
    args = {a for i, a in steps if i == "ARG"}
    assert {"BUILD_ARCH", "BUILD_VERSION", "HARKEN_SOURCE_URL"} <= args
    # The very command deploy/Dockerfile runs.
    assert _install_command(steps) == _install_command(_steps(REPO / "deploy" / "Dockerfile"))
    apt = next(a for i, a in steps if i == "RUN" and "apt-get install" in a)
    for package in ("python3-venv", "libportaudio2", "libasound2-plugins", "libsndfile1", "ffmpeg"):
        assert package in apt, package
    assert "torch" not in " ".join(a for i, a in steps if i == "RUN")
    labels = dict(kv.split("=", 1) for kv in shlex.split(" ".join(a for i, a in steps if i == "LABEL")))
    assert labels == {"io.hass.version": "${BUILD_VERSION}", "io.hass.type": "addon", "io.hass.arch": "${BUILD_ARCH}"}
    command = json.loads(dict(steps)["CMD"])
    assert command[-2:] == ["harken", "addon"] and command[0] == "/usr/bin/with-contenv"


class _Archives(http.server.BaseHTTPRequestHandler):
    """Serves release archives like GitHub's /archive/refs/tags/v<version>.tar.gz."""

    archives: ClassVar[dict[str, bytes]] = {}

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = self.archives.get(self.path)
        self.send_response(200 if body else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")


def test_dockerfile_fetches_the_release_of_its_version_and_runs_install_sh(
    tmp_path: Path, config: dict[str, Any]
) -> None:
    """The image's RUN step as the builder runs it, with the archive from a local server and
    a stand-in install.sh that records how it was called (the real one is run by
    tests/test_deploy.py in a fresh venv)."""
    sh = require_program("sh")
    require_program("curl")
    require_program("tar")
    version = config["version"]
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        top = f"harken-{version}"  # GitHub's archives hold one folder named after the tag
        for name in ("pyproject.toml", "README.md"):
            tar.add(REPO / name, f"{top}/{name}")
        stand_in = b'#!/bin/sh\necho "$@" > "$2/../install-args"\ntest -f "$2/pyproject.toml"\n'
        info = tarfile.TarInfo(f"{top}/deploy/install.sh")
        info.size = len(stand_in)
        tar.addfile(info, io.BytesIO(stand_in))
    _Archives.archives = {f"/archive/refs/tags/v{version}.tar.gz": archive.getvalue()}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Archives)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        run = next(a for i, a in _steps(ADDON / "Dockerfile") if i == "RUN" and "install.sh" in a)
        src = tmp_path / "harken-src"
        run = run.replace("/tmp/harken-src", str(src)).replace("/opt/harken/venv", str(tmp_path / "venv"))
        env = {
            "PATH": os.environ["PATH"],
            "BUILD_VERSION": version,  # build args are environment variables of RUN
            "HARKEN_SOURCE_URL": f"http://127.0.0.1:{server.server_address[1]}/archive/refs/tags",
        }
        result = subprocess.run([sh, "-ec", run], env=env, capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "install-args").read_text().split() == [str(tmp_path / "venv"), str(src)]
    assert not src.exists()  # the source is removed after the install


# ----------------------------------------------------------------- options -> config

SERVICE = MqttService(host="core-mosquitto", port=1883, username="addons", password="Eph8ae", ssl=False)


@pytest.fixture
def defaults(config: dict[str, Any]) -> dict[str, Any]:
    """The options a fresh install starts with: config.yaml's `options`."""
    return json.loads(json.dumps(config["options"]))


def test_options_model_mirrors_the_schema(config: dict[str, Any]) -> None:
    schema = config["schema"]
    assert set(schema) == set(AddonOptions.model_fields)
    for name, element in schema.items():
        nested = element[0] if isinstance(element, list) else element
        if isinstance(nested, dict):
            annotation = AddonOptions.model_fields[name].annotation
            model = annotation.__args__[0] if isinstance(element, list) else annotation
            assert set(nested) == set(model.model_fields), name
    # config.yaml's defaults are the model's defaults.
    assert AddonOptions.model_validate(config["options"]) == AddonOptions()


def test_default_options_without_a_broker(defaults: dict[str, Any], tmp_path: Path) -> None:
    settings, notes = addon_settings(defaults, None, config_dir=tmp_path)
    assert [(s.name, s.url) for s in settings.sources] == [("default", "mic")]
    assert {n: (c.enabled, c.sensitivity) for n, c in settings.classes.items()} == dict.fromkeys(
        CLASS_OPTIONS, (True, 0.5)
    )
    assert settings.store.path == tmp_path / "harken.db" and settings.store.retention_days == 30
    api = settings.api
    assert (api.host, api.port, api.token) == ("0.0.0.0", 8099, None)
    assert api.ingress.enabled and api.ingress.trusted_proxies == ["172.30.32.2"]
    assert settings.mqtt.enabled is False
    assert any("MQTT off: no broker" in n and "Mosquitto" in n for n in notes)
    assert settings.webhooks == [] and settings.log.level == "info"


def test_the_supervisors_broker_is_used(defaults: dict[str, Any]) -> None:
    settings, notes = addon_settings(defaults, SERVICE)
    mqtt = settings.mqtt
    assert (mqtt.enabled, mqtt.host, mqtt.port, mqtt.username, mqtt.password) == (
        True, "core-mosquitto", 1883, "addons", "Eph8ae"
    )
    assert mqtt.node_id == "harken" and mqtt.tls.enabled is False
    assert "MQTT broker core-mosquitto:1883 as addons (from the Supervisor)" in notes
    assert not any("Eph8ae" in n for n in notes)
    tls = addon_settings(defaults, MqttService("core-mosquitto", 8883, ssl=True))[0].mqtt
    assert tls.tls.enabled and tls.port == 8883 and tls.username is None


def test_options_override_the_supervisors_login(defaults: dict[str, Any]) -> None:
    own_login = {**defaults, "mqtt_username": "harken", "mqtt_password": "pw-1", "mqtt_port": 1884}
    mqtt = addon_settings(own_login, SERVICE)[0].mqtt
    assert (mqtt.host, mqtt.port, mqtt.username, mqtt.password) == ("core-mosquitto", 1884, "harken", "pw-1")
    # Another broker: the Supervisor's login is never sent to it.
    elsewhere = addon_settings({**defaults, "mqtt_host": "broker.lan"}, SERVICE)[0].mqtt
    assert (elsewhere.host, elsewhere.port, elsewhere.username, elsewhere.password) == (
        "broker.lan", 1883, None, None
    )
    off, notes = addon_settings({**defaults, "mqtt_enabled": False}, SERVICE)
    assert off.mqtt.enabled is False and "MQTT off (mqtt_enabled: false)" in notes


def test_every_option_maps_onto_harken(defaults: dict[str, Any], tmp_path: Path) -> None:
    options = {
        **defaults,
        "sources": [{"name": "nursery", "url": "mic"}, {"name": "porch", "url": "url:rtsp://cam.lan/live"}],
        "baby_cry": {"enabled": True, "sensitivity": 0.8},
        "smoke_alarm": {"enabled": True, "sensitivity": 0.25},
        "glass_break": {"enabled": False, "sensitivity": 0.5},
        "webhooks": [
            {"name": "phone", "url": "https://ntfy.sh/my-topic", "format": "ntfy",
             "classes": "smoke_alarm, glass_break", "on": "start_and_end", "cooldown_s": 300,
             "secret": "s1"},
            {"url": "http://homeassistant.local:8123/api/webhook/harken", "format": "homeassistant"},
        ],
        "mqtt_node_id": "upstairs",
        "api_token": "a-long-token",
        "public_url": "https://harken.example.org",
        "retention_days": 7,
        "log_level": "debug",
    }
    settings, _ = addon_settings(options, SERVICE, config_dir=tmp_path, port=9000, ingress_proxies=("10.0.0.2",))
    assert [(s.name, s.url) for s in settings.sources] == [("nursery", "mic"), ("porch", "url:rtsp://cam.lan/live")]
    assert settings.classes["baby_cry"].sensitivity == 0.8 and settings.classes["smoke_alarm"].sensitivity == 0.25
    assert settings.classes["glass_break"].enabled is False
    phone, ha_hook = settings.webhooks
    assert (phone.name, phone.format, phone.classes, phone.on, phone.cooldown_s, phone.secret) == (
        "phone", "ntfy", ["smoke_alarm", "glass_break"], ["start", "end"], 300.0, "s1"
    )
    assert (ha_hook.name, ha_hook.classes, ha_hook.on, ha_hook.secret) == (None, None, ["start"], None)
    assert settings.mqtt.node_id == "upstairs" and settings.mqtt.public_url == "https://harken.example.org"
    assert settings.api.token == "a-long-token" and settings.api.port == 9000
    assert settings.api.ingress.trusted_proxies == ["10.0.0.2"]
    assert settings.store.retention_days == 7 and settings.log.level == "debug"


def test_optional_options_may_be_left_out(config: dict[str, Any], defaults: dict[str, Any]) -> None:
    # What the Supervisor writes when the user leaves optional options empty: no key at all.
    optional = [k for k, v in config["schema"].items() if isinstance(v, str) and v.endswith("?")]
    assert {"mqtt_host", "mqtt_port", "mqtt_username", "mqtt_password", "api_token", "public_url"} <= set(optional)
    assert not set(optional) & set(defaults)
    minimal_hook = {"webhooks": [{"url": "https://example.org/hook", "format": "generic"}]}
    assert addon_settings({**defaults, **minimal_hook}, None)[0].webhooks[0].url == "https://example.org/hook"


INVALID: list[tuple[dict[str, Any], str]] = [
    ({"sources": []}, "sources: List should have at least 1 item"),
    ({"sources": [{"name": "x"}]}, "sources.0.url: Field required"),
    ({"sources": [{"name": "x", "url": "ftp:x"}]}, "sources.0.url:"),
    ({"sources": [{"name": "my room", "url": "mic"}]}, "sources.0.name: String should match pattern"),
    ({"sources": [{"name": "a", "url": "mic"}, {"name": "a", "url": "demo"}]}, "source names must be unique"),
    ({"sources": [{"name": "a", "url": "mic", "gain": 2}]}, "sources.0.gain: unknown key"),
    ({"smoke_alarm": {"enabled": True, "sensitivity": 1.5}},
     "smoke_alarm.sensitivity: Input should be less than or equal to 1"),
    ({"baby_cry": {"enabled": True, "sensitivity": -0.1}},
     "baby_cry.sensitivity: Input should be greater than or equal to 0"),
    ({"glass_break": {"enabled": True, "sensitivity": "high"}},
     "glass_break.sensitivity: Input should be a valid number"),
    ({"baby_cry": {"enabled": "maybe", "sensitivity": 0.5}}, "baby_cry.enabled: Input should be a valid boolean"),
    ({"baby_cry": {"enabled": True}}, ""),  # sensitivity left out: the default (valid)
    ({"smoke_alarm": {"enabled": None, "sensitivity": 0.5}}, "smoke_alarm.enabled: Input should be a valid boolean"),
    ({"glass_break": {"enabled": 1.5, "sensitivity": 0.5}}, "glass_break.enabled: Input should be a valid boolean"),
    ({"glass_break": "off"}, "glass_break: Input should be a valid dictionary"),
    ({"baby_cry": None}, "baby_cry: Input should be a valid dictionary"),
    ({"smoke_alarm": [0.5]}, "smoke_alarm: Input should be a valid dictionary"),
    ({"webhooks": {"url": "https://x.org/h"}}, "webhooks: Input should be a valid list"),
    ({"webhooks": [{"name": "my phone", "url": "https://x.org/h"}]}, "webhooks.0.name: String should match pattern"),
    ({"webhooks": [{"url": "https://x.org/h", "secret": ""}]},
     "webhooks.0.secret: String should have at least 1 character (value not shown: it is a secret)"),
    ({"webhooks": [{"url": "ntfy.sh/x", "format": "ntfy"}]}, "webhooks.0.url: String should match pattern"),
    ({"webhooks": [{"url": "https://x.org/h", "format": "telegram"}]}, "webhooks.0.format:"),
    ({"webhooks": [{"url": "https://x.org/h", "classes": "dog_bark"}]},
     "webhooks.0.classes: Value error, unknown class 'dog_bark'"),
    ({"webhooks": [{"url": "https://x.org/h", "on": "middle"}]}, "webhooks.0.on:"),
    ({"webhooks": [{"url": "https://x.org/h", "cooldown_s": -1}]},
     "webhooks.0.cooldown_s: Input should be greater than or equal to 0"),
    ({"webhooks": [{"url": "https://ntfy.sh/", "format": "ntfy"}]}, "webhooks.0:"),
    ({"webhooks": [{"name": "a", "url": "https://x.org/1"}, {"name": "a", "url": "https://x.org/2"}]},
     "webhook names must be unique"),
    ({"mqtt_enabled": "sometimes"}, "mqtt_enabled: Input should be a valid boolean"),
    ({"mqtt_port": 0}, "mqtt_port: Input should be greater than or equal to 1"),
    ({"mqtt_port": 70000}, "mqtt_port: Input should be less than or equal to 65535"),
    ({"mqtt_host": ""}, "mqtt_host: String should have at least 1 character"),
    ({"mqtt_node_id": "up stairs"}, "mqtt_node_id: String should match pattern"),
    ({"mqtt_username": ""}, "mqtt_username: String should have at least 1 character"),
    ({"mqtt_password": ""}, "mqtt_password: String should have at least 1 character (value not shown: it is a secret)"),
    ({"api_token": "short"}, "api_token: String should have at least 8 characters (value not shown: it is a secret)"),
    ({"public_url": "ftp://x"}, "public_url: String should match pattern"),
    ({"retention_days": 0}, "retention_days: Input should be greater than or equal to 1"),
    ({"retention_days": 4000}, "retention_days: Input should be less than or equal to 3650"),
    ({"log_level": "verbose"}, "log_level: Input should be 'debug', 'info', 'warning' or 'error'"),
    ({"colour": "red"}, "colour: unknown key"),
]


@pytest.mark.parametrize(("change", "expected"), INVALID, ids=[str(c)[:60] for c, _ in INVALID])
def test_a_wrong_option_is_one_line_naming_it(defaults: dict[str, Any], change: dict[str, Any], expected: str) -> None:
    options = {**defaults, **change}
    if not expected:
        addon_settings(options, SERVICE)  # valid
        return
    with pytest.raises(ConfigError) as error:
        addon_settings(options, SERVICE)
    message = str(error.value)
    assert "\n" not in message and message.startswith("add-on options: "), message
    assert expected in message, message
    for secret in ("short", "Eph8ae"):
        assert f"'{secret}'" not in message


def _option_paths(schema: dict[str, Any]) -> set[str]:
    paths = set()
    for key, element in schema.items():
        paths.add(key)
        nested = element[0] if isinstance(element, list) else element
        if isinstance(nested, dict):
            paths |= {f"{key}.{field}" for field in nested}
    return paths


def test_every_option_has_an_invalid_case(config: dict[str, Any]) -> None:
    named = {re.sub(r"\.\d+", "", expected.split(":", 1)[0]) for _, expected in INVALID if expected}
    assert _option_paths(config["schema"]) - named == set()


def test_options_file_problems_are_named(tmp_path: Path) -> None:
    path = tmp_path / "options.json"
    with pytest.raises(ConfigError, match="add-on options not found"):
        read_options(path)
    path.write_text('{"log_level": ')
    with pytest.raises(ConfigError, match=r"not valid JSON at line 1, column 15"):
        read_options(path)
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must be a JSON object, got list"):
        read_options(path)


def test_harken_addon_logs_one_line_for_a_wrong_option(tmp_path: Path, defaults: dict[str, Any]) -> None:
    options = tmp_path / "options.json"
    options.write_text(json.dumps({**defaults, "smoke_alarm": {"enabled": True, "sensitivity": 2}}))
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "addon", "--options", str(options), "--config-dir", str(tmp_path)],
        env={k: v for k, v in os.environ.items() if k != "SUPERVISOR_TOKEN"},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert lines == [
        "harken addon: add-on options: smoke_alarm.sensitivity: Input should be less than or equal to 1 (got 2)"
    ]


# ----------------------------------------------------------------- the Supervisor's services API

SUPERVISOR_TOKEN = "sup-token-7f3a"


class _Supervisor(http.server.BaseHTTPRequestHandler):
    """Answers GET /services/mqtt like the Supervisor: its `{"result", "data"|"message"}`
    envelope, 401 for a wrong token, 400 "Service not enabled" without a broker."""

    mode = "ok"
    data: ClassVar[dict[str, Any]] = {}
    requests: ClassVar[list[tuple[str, str | None]]] = []

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, status: int, body: dict[str, Any] | None, raw: bytes | None = None) -> None:
        payload = raw if raw is not None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if raw is None else "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization")
        type(self).requests.append((self.path, auth))
        if auth != f"Bearer {SUPERVISOR_TOKEN}":
            self._reply(401, None, b"401: Unauthorized")
        elif self.path != "/services/mqtt":
            self._reply(404, {"result": "error", "message": "Service does not exist"})
        elif self.mode == "not_enabled":
            self._reply(400, {"result": "error", "message": "Service not enabled"})
        elif self.mode == "forbidden":
            self._reply(403, {"result": "error", "message": "No access to mqtt service!"})
        elif self.mode == "busy" and len(type(self).requests) == 1:
            self._reply(502, None, b"Bad Gateway")
        elif self.mode == "malformed":
            self._reply(200, {"result": "ok", "data": {"host": "core-mosquitto", "port": "1883"}})
        else:
            self._reply(200, {"result": "ok", "data": self.data})


@pytest.fixture
def supervisor() -> Iterator[str]:
    _Supervisor.mode, _Supervisor.requests = "ok", []
    _Supervisor.data = {
        "host": "core-mosquitto", "port": 1883, "ssl": False, "protocol": "3.1.1",
        "username": "addons", "password": "Eph8ae", "addon": "core_mosquitto",
    }
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Supervisor)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_supervisor_mqtt_service_is_read(supervisor: str) -> None:
    service, why = fetch_mqtt_service(supervisor, SUPERVISOR_TOKEN)
    assert why is None and service == SERVICE
    assert _Supervisor.requests == [("/services/mqtt", f"Bearer {SUPERVISOR_TOKEN}")]


@pytest.mark.parametrize(
    ("mode", "token", "expected"),
    [
        ("not_enabled", SUPERVISOR_TOKEN, "the Supervisor has no MQTT broker (Service not enabled)"),
        ("forbidden", SUPERVISOR_TOKEN, "HTTP 403: No access to mqtt service!); does config.yaml list services"),
        ("ok", "wrong-token", "refused the MQTT service query (HTTP 401"),
        ("malformed", SUPERVISOR_TOKEN, "the Supervisor's MQTT service data is malformed: port is '1883'"),
        ("ok", None, "no SUPERVISOR_TOKEN in the environment"),
    ],
)
def test_supervisor_without_a_broker_says_why(supervisor: str, mode: str, token: str | None, expected: str) -> None:
    _Supervisor.mode = mode
    service, why = fetch_mqtt_service(supervisor, token, attempts=3, retry_s=0)
    assert service is None and why is not None and expected in why, why
    assert len(_Supervisor.requests) == (0 if token is None else 1)  # a clear answer is not asked again


def test_a_busy_or_absent_supervisor_is_asked_again(supervisor: str) -> None:
    _Supervisor.mode = "busy"  # 502 first, then the broker
    service, why = fetch_mqtt_service(supervisor, SUPERVISOR_TOKEN, attempts=2, retry_s=0)
    assert service == SERVICE and why is None and len(_Supervisor.requests) == 2
    gone = f"http://127.0.0.1:{free_port()}"
    service, why = fetch_mqtt_service(gone, SUPERVISOR_TOKEN, attempts=2, retry_s=0, timeout_s=2)
    assert service is None and why is not None and "cannot be reached" in why


# ----------------------------------------------------------------- end to end


@pytest.mark.integration
def test_addon_end_to_end_with_supervisor_broker_and_ha_audio(
    tmp_path: Path, supervisor: str, config: dict[str, Any]
) -> None:
    """`harken addon` on the default options: the broker comes from the Supervisor, the
    sound from Home Assistant's PulseAudio server; a smoke alarm played into it reaches MQTT."""
    from tests.virtual_mic import VirtualMic

    mosquitto, mosquitto_pub = require_program("mosquitto"), require_program("mosquitto_pub")
    passwd = require_program("mosquitto_passwd")
    require_program("pulseaudio")
    require_program("pactl")
    login = ("addons", "Eph8ae-e2e")
    password_file = tmp_path / "passwd"
    subprocess.run([passwd, "-b", "-c", str(password_file), *login], check=True, capture_output=True, timeout=10)
    broker = Broker(tmp_path / "broker", mosquitto, mosquitto_pub, password_file=password_file, credentials=login)
    broker.start()
    _Supervisor.data = {**_Supervisor.data, "host": "127.0.0.1", "port": broker.port, "password": login[1]}
    mic = VirtualMic(tmp_path / "pulse")
    mic.start()
    recorder = Recorder(broker.port, ["homeassistant/+/harken/+/config", "harken/harken/#"], credentials=login)
    options = tmp_path / "options.json"
    options.write_text(json.dumps(config["options"]))  # a fresh install's options
    port = free_port()
    log_path = tmp_path / "addon.log"
    env = {**mic.env, "SUPERVISOR_TOKEN": SUPERVISOR_TOKEN, "PYTHONUNBUFFERED": "1"}
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "addon", "--options", str(options),
             "--config-dir", str(tmp_path / "config"), "--supervisor-url", supervisor, "--port", str(port)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        def online(messages: list) -> bool:
            return any(m.topic == "harken/harken/availability" and m.text == "online" for m in messages)

        recorder.wait_for(online, 40, f"availability online; log:\n{log_path.read_text()}")
        discovery = recorder.on("homeassistant/binary_sensor/harken/smoke_alarm/config")
        assert discovery and json.loads(discovery[-1].text)["device_class"] == "smoke"
        # MQTT may come up before the API server does: wait for the API too.
        deadline = time.monotonic() + 30
        while True:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=10)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
        assert status.status_code == 200  # no api_token: this machine may ask
        (source,) = status.json()["sources"]
        assert (source["name"], source["url"]) == ("default", "mic")
        mic.play(t3_scene(seconds=9.0, alarm_at_s=1.0))

        def alarm(messages: list) -> bool:
            return any(m.topic == "harken/harken/smoke_alarm/state" and m.text == "ON" for m in messages) and any(
                m.topic == "harken/harken/events" and json.loads(m.text)["class"] == "smoke_alarm" for m in messages
            )

        recorder.wait_for(alarm, 40, f"smoke_alarm ON and its event from the microphone; log:\n{log_path.read_text()}")
        events = [json.loads(m.text) for m in recorder.on("harken/harken/events")]
        assert {(e["class"], e["source"], e["phase"]) for e in events} >= {("smoke_alarm", "default", "start")}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait(timeout=10)
        recorder.close()
        mic.stop()
        broker.stop()
    output = log_path.read_text()
    assert code == 0, output
    assert f"add-on: MQTT broker 127.0.0.1:{broker.port} as addons (from the Supervisor)" in output
    assert login[1] not in output
    assert _Supervisor.requests == [("/services/mqtt", f"Bearer {SUPERVISOR_TOKEN}")]
    assert (tmp_path / "config" / "harken.db").is_file()
    # A clean stop: the broker saw harken go offline.
    assert recorder.on("harken/harken/availability")[-1].text == "offline"
