"""Deployment files: compose, Dockerfile (its install steps run for real), systemd unit,
Mosquitto config and the example config. No Docker engine runs here: nothing starts
containers; compose is validated by a compose client and the image's Python layer is
built by the very script the Dockerfile runs."""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from service.config import Settings
from tests.conftest import require_program

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
TOKEN = "test-token-0123456789"


def _clean_env(**extra: str) -> dict[str, str]:
    # No HARKEN_* config, and no PYTHONPATH to this checkout: the installed copy must stand alone.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARKEN_") and k != "PYTHONPATH"}
    env.update(extra)
    return env


# ----------------------------------------------------------------- docker-compose.yml


def _compose(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    compose = require_program("docker-compose")
    return subprocess.run(
        [compose, "--project-directory", str(REPO), "-f", str(REPO / "docker-compose.yml"), *args],
        cwd=REPO,
        env=_clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_compose_file_validates() -> None:
    result = _compose("config", "-q", HARKEN_API_TOKEN=TOKEN)
    assert result.returncode == 0, result.stderr


def test_compose_requires_an_api_token() -> None:
    result = _compose("config", "-q")
    assert result.returncode != 0
    assert "HARKEN_API_TOKEN" in result.stderr


def test_compose_wires_harken_to_mosquitto() -> None:
    result = _compose("config", HARKEN_API_TOKEN=TOKEN)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    harken, broker = services["harken"], services["mosquitto"]
    env = harken["environment"]
    assert env["HARKEN_MQTT__ENABLED"] == "true"
    assert env["HARKEN_MQTT__HOST"] == "mosquitto"  # the broker's service name
    assert env["HARKEN_API__TOKEN"] == TOKEN
    assert harken["build"]["dockerfile"].endswith("deploy/Dockerfile")
    assert harken["restart"] == broker["restart"] == "unless-stopped"
    assert "mosquitto" in harken["depends_on"]
    mounts = {
        str(v.get("target") if isinstance(v, dict) else v.split(":")[1]) for v in harken["volumes"]
    }
    assert {"/config", "/data"} <= mounts
    broker_sources = " ".join(
        str(v.get("source") if isinstance(v, dict) else v) for v in broker["volumes"]
    )
    assert "deploy/mosquitto/mosquitto.conf" in broker_sources
    assert any("8080" in str(p) for p in harken["ports"])
    assert any("1883" in str(p) for p in broker["ports"])


@pytest.mark.integration
def test_mosquitto_config_runs_in_a_real_broker(tmp_path: Path) -> None:
    """The compose broker's config, with only port and data directory moved into tmp."""
    mosquitto = require_program("mosquitto")
    mosquitto_pub = require_program("mosquitto_pub")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    text = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    assert re.search(r"^listener 1883$", text, re.M) and re.search(
        r"^allow_anonymous true$", text, re.M
    )
    assert re.search(r"^persistence true$", text, re.M)
    text = text.replace("listener 1883", f"listener {port} 127.0.0.1")
    text = text.replace("/mosquitto/data/", f"{tmp_path}/")
    if os.geteuid() == 0:
        text += "user root\n"  # else mosquitto drops to its own user, who cannot write tmp_path
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(text)
    broker = subprocess.Popen(
        [mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            publish = subprocess.run(
                [
                    mosquitto_pub,
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-t",
                    "harken/test",
                    "-m",
                    "x",
                    "-r",
                ],
                capture_output=True,
                timeout=10,
            )
            if publish.returncode == 0:
                break
            assert broker.poll() is None, broker.stderr.read() if broker.stderr else ""
            assert time.monotonic() < deadline, publish.stderr
            time.sleep(0.1)
    finally:
        broker.terminate()
        broker.wait(timeout=10)
    assert (tmp_path / "mosquitto.db").exists()  # persistence wrote its file on shutdown


# ----------------------------------------------------------------- Dockerfile


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text()
    text = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")),
    )
    return [
        (m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^(\w+)\s+(.*)$", text, re.M)
    ]


def test_dockerfile_is_a_small_non_root_runtime_image() -> None:
    steps = _dockerfile()
    instructions = [i for i, _ in steps]
    assert steps[0] == ("FROM", "python:3.11-slim")
    args = {i: a for i, a in steps}
    assert args["USER"] not in ("root", "0")
    assert instructions.index("USER") > max(i for i, (ins, _) in enumerate(steps) if ins == "RUN")
    apt = next(a for i, a in steps if i == "RUN" and "apt-get install" in a)
    for package in ("libportaudio2", "libsndfile1", "ffmpeg", "--no-install-recommends"):
        assert package in apt
    assert "torch" not in " ".join(a for i, a in steps if i in ("RUN", "COPY"))
    assert json.loads(args["VOLUME"]) == ["/config", "/data"]
    env = dict(kv.split("=", 1) for kv in shlex.split(args["ENV"]))
    assert env["HARKEN_STORE__PATH"] == "/data/harken.db"
    assert env["HARKEN_API__HOST"] == "0.0.0.0"
    assert env["HARKEN_CONFIG"] == "/config/harken.yaml"
    assert json.loads(args["ENTRYPOINT"]) == ["harken"] and json.loads(args["CMD"]) == ["run"]


def _healthcheck_command() -> list[str]:
    args = dict(_dockerfile())["HEALTHCHECK"]
    command = json.loads(args[args.index("CMD") + 3 :].strip())
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/api/health" else 404)
        self.end_headers()


@pytest.fixture
def health_server() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_dockerfile_healthcheck_probes_api_health(
    health_server: http.server.ThreadingHTTPServer,
) -> None:
    command = _healthcheck_command()
    port = str(health_server.server_address[1])

    def probe() -> int:
        return subprocess.run(
            command, env=_clean_env(HARKEN_API__PORT=port), capture_output=True, timeout=30
        ).returncode

    _Health.status = 200
    assert probe() == 0
    _Health.status = 503
    try:
        assert probe() != 0
    finally:
        _Health.status = 200
    health_server.shutdown()
    health_server.server_close()
    assert probe() != 0  # nothing listening


def _image_sources(dest: Path) -> Path:
    """Copy what the Dockerfile's COPY steps put into the image's source directory."""
    for instruction, args in _dockerfile():
        if instruction != "COPY":
            continue
        *sources, target = shlex.split(args)
        assert target.startswith("/tmp/harken-src"), target
        inside = dest / target.removeprefix("/tmp/harken-src").lstrip("/")
        for source in sources:
            origin = REPO / source
            into = inside / origin.name if target.endswith("/") else inside
            into.parent.mkdir(parents=True, exist_ok=True)
            if origin.is_dir():
                shutil.copytree(origin, into, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(origin, into)
    return dest


@pytest.mark.slow
@pytest.mark.integration
def test_image_install_steps_in_a_fresh_venv(tmp_path: Path) -> None:
    """The Dockerfile's RUN: deploy/install.sh into a new venv without system packages.

    Uses pip's cache; the first run on a machine downloads the runtime wheels."""
    run = next(a for i, a in _dockerfile() if i == "RUN" and "install.sh" in a)
    assert "deploy/install.sh /opt/harken/venv /tmp/harken-src" in run
    src = _image_sources(tmp_path / "src")
    venv = tmp_path / "venv"
    env = _clean_env(PIP_NO_COMPILE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    result = subprocess.run(
        ["sh", str(src / "deploy" / "install.sh"), str(venv), str(src)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    harken = venv / "bin" / "harken"
    version = subprocess.run([str(harken), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("harken ")
    check = subprocess.run(
        [str(harken), "check-config", str(DEPLOY / "harken.example.yaml")],
        env=_clean_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stderr
    # Runtime only: no torch in the image; the bundled model ships inside the package.
    probe = (
        "import importlib.util as u, service.detector as d; "
        "print(u.find_spec('torch') is None, d.bundled_model_path().is_file(), d.__file__)"
    )
    found = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe],
        env=_clean_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    no_torch, has_model, module = found.stdout.split()
    assert (no_torch, has_model) == ("True", "True"), found.stderr
    assert module.startswith(str(venv))  # the installed copy, not the source tree
    # The image serves the dashboard's live WebSocket: a real handshake with the daemon's
    # uvicorn settings, from the image's own packages (the suite's venv may have more).
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "from service.api.server import probe_websocket; print(probe_websocket() or 'served')"],
        env=_clean_env(), cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert probe.stdout.strip() == "served", probe.stdout + probe.stderr


@pytest.mark.slow
@pytest.mark.integration
def test_runtime_dependencies_have_wheels_for_arm64_and_amd64(tmp_path: Path) -> None:
    """The image builds on a Raspberry Pi as on a server: every runtime dependency resolves
    to a binary wheel for each architecture (pip resolves metadata only, installs nothing)."""
    src = _image_sources(tmp_path / "src")
    wheels = tmp_path / "wheels"
    env = _clean_env(PIP_DISABLE_PIP_VERSION_CHECK="1")
    pip = [sys.executable, "-m", "pip"]
    built = subprocess.run(
        [*pip, "wheel", "-q", "--no-deps", "-w", str(wheels), str(src)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("harken-*.whl")
    for arch in ("aarch64", "x86_64"):
        tags = ("manylinux_2_28", "manylinux_2_17", "manylinux2014")
        report = tmp_path / f"report-{arch}.json"
        resolve = subprocess.run(
            [
                *pip,
                "install",
                "--dry-run",
                "--ignore-installed",
                "--only-binary=:all:",
                *(f"--platform={tag}_{arch}" for tag in tags),
                "--python-version=3.11",
                "--implementation=cp",
                "--abi=cp311",
                f"--target={tmp_path / 'target'}",
                f"--report={report}",
                "-q",
                str(wheel),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert resolve.returncode == 0, f"{arch}: {resolve.stderr[-3000:]}"
        installs = json.loads(report.read_text())["install"]
        names = {re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower() for i in installs}  # PEP 503
        expected = {"numpy", "scipy", "onnxruntime", "soundfile", "soxr", "pydantic-core"}
        assert expected <= names, (arch, sorted(names))
        assert "torch" not in names


# ----------------------------------------------------------------- systemd


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = require_program("systemd-analyze")
    text = (DEPLOY / "harken.service").read_text()
    settings = dict(re.findall(r"^(\w+)=(.*)$", text, re.M))
    assert settings["User"] == "harken" and settings["SupplementaryGroups"] == "audio"
    assert settings["Restart"] == "on-failure"
    assert settings["ProtectSystem"] == "strict"
    assert settings["NoNewPrivileges"] == "yes" and settings["PrivateTmp"] == "yes"
    store = re.search(r"HARKEN_STORE__PATH=(\S+)", settings["Environment"])
    assert store and Path(store.group(1)).parent == Path(settings["ReadWritePaths"])
    # verify checks that ExecStart exists: point it at a stand-in for the installed harken.
    stand_in = tmp_path / "harken"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    unit = tmp_path / "harken.service"
    unit.write_text(text.replace("/opt/harken/venv/bin/harken", str(stand_in)))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "harken.service" not in result.stderr, result.stderr  # no unknown keys or bad values


# ----------------------------------------------------------------- example config


def _keys(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every dotted key of the config tree (list and dict items by their fields)."""
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        yield key
        for arg in typing.get_args(field.annotation) or (field.annotation,):
            for inner in typing.get_args(arg) or (arg,):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    yield from _keys(inner, key + ".")


def _present(data: object, path: list[str]) -> bool:
    if not path:
        return True
    if isinstance(data, list):
        return bool(data) and all(_present(item, path) for item in data)
    if not isinstance(data, dict):
        return False
    if path[0] in data:
        return _present(data[path[0]], path[1:])
    # dict-valued sections (classes) are keyed by name: every entry must have the key.
    return (
        bool(data)
        and all(isinstance(v, dict) for v in data.values())
        and all(_present(v, path) for v in data.values())
    )


def test_example_config_has_every_key_and_passes_check_config() -> None:
    example = DEPLOY / "harken.example.yaml"
    data = yaml.safe_load(example.read_text())
    missing = [key for key in _keys(Settings) if not _present(data, key.split("."))]
    assert missing == [], f"deploy/harken.example.yaml lacks {missing}"
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "check-config", str(example)],
        cwd=REPO,
        env=_clean_env(PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_harken_config_variable_is_optional(tmp_path: Path) -> None:
    """The image sets HARKEN_CONFIG=/config/harken.yaml; an empty /config must still start."""
    from service.cli import _config_path, build_parser

    args = build_parser().parse_args(["doctor"])
    config = tmp_path / "harken.yaml"
    old = os.environ.get("HARKEN_CONFIG")
    try:
        os.environ["HARKEN_CONFIG"] = str(config)
        assert _config_path(args) is None  # missing file: defaults + environment
        config.write_text("log: {level: debug}\n")
        assert _config_path(args) == config
    finally:
        if old is None:
            os.environ.pop("HARKEN_CONFIG", None)
        else:
            os.environ["HARKEN_CONFIG"] = old
