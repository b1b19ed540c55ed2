"""`harken doctor` against real parts: a Mosquitto broker, a local HTTP server, files."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from service.cli import main
from tests.conftest import require_program

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Broker:
    """A private Mosquitto on a free port; `users` turns anonymous access off."""

    def __init__(self, tmp_path: Path, users: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        conf = [f"listener {self.port} 127.0.0.1", "persistence false"]
        if os.geteuid() == 0:
            conf.append("user root")  # else it drops to user mosquitto, who cannot read tmp_path
        if users:
            passwd = tmp_path / "passwd"
            passwd.touch()
            for user, password in users.items():
                subprocess.run(
                    [require_program("mosquitto_passwd"), "-b", str(passwd), user, password],
                    check=True,
                    timeout=10,
                )
            conf += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            conf.append("allow_anonymous true")
        path = tmp_path / f"mosquitto-{self.port}.conf"
        path.write_text("\n".join(conf) + "\n")
        self.proc = subprocess.Popen(
            [require_program("mosquitto"), "-c", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("mosquitto did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    yield b
    b.stop()


class Receiver:
    """A local HTTP server that counts every request it gets."""

    def __init__(self) -> None:
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                outer.requests += 1
                self.send_response(204)
                self.end_headers()

            do_GET = do_POST

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture(autouse=True)
def _no_harken_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("HARKEN_"):
            monkeypatch.delenv(key)


def _doctor(
    config: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, dict]]:
    path = tmp_path / "harken.yaml"
    path.write_text(yaml.safe_dump(config))
    code = main(["doctor", "--config", str(path), "--timeout", "3", "--json"])
    checks = json.loads(capsys.readouterr().out)
    return code, {c["name"]: c for c in checks}


@pytest.fixture
def wav(write_wav: Callable[..., Path]) -> Path:
    return write_wav(np.zeros(16000, np.float32), "room.wav")


@pytest.mark.integration
def test_doctor_all_good(
    tmp_path: Path,
    wav: Path,
    broker: Broker,
    receiver: Receiver,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = {
        "sources": [{"name": "room", "url": f"file:{wav}"}, {"name": "demo", "url": "demo"}],
        "store": {"path": str(tmp_path / "data" / "harken.db")},
        "api": {"port": _free_port()},
        "mqtt": {"enabled": True, "host": "127.0.0.1", "port": broker.port},
        "webhooks": [{"name": "phone", "url": f"http://127.0.0.1:{receiver.port}/hook"}],
    }
    code, checks = _doctor(config, tmp_path, capsys)
    assert code == 0, checks
    for name in (
        "config",
        "model",
        "source room",
        "source demo",
        "store",
        "api",
        "websocket",
        "mqtt",
        "webhook phone",
    ):
        assert checks[name]["status"] == "ok", checks[name]
    assert "accepted" in checks["mqtt"]["detail"]
    assert receiver.requests == 0  # reachability only: no notification was sent


@pytest.mark.integration
def test_doctor_reports_each_failure_with_a_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the store's directory should be")
    config = {
        "sources": [
            {"name": "attic", "url": "file:/nonexistent/attic.wav"},
            {"name": "usb", "url": "mic:NoSuchMicrophone"},
        ],
        "store": {"path": str(blocker / "harken.db")},
        "api": {"host": "0.0.0.0", "port": _free_port()},
        "mqtt": {"enabled": True, "host": "127.0.0.1", "port": _free_port()},
        "webhooks": [{"url": f"http://127.0.0.1:{_free_port()}/hook"}],
    }
    code, checks = _doctor(config, tmp_path, capsys)
    assert code == 1
    for name in ("source attic", "source usb", "store", "api", "mqtt", "webhook 0"):
        assert checks[name]["status"] == "fail", checks[name]
        assert checks[name]["fix"], name
    assert checks["model"]["status"] == "ok"
    assert "token" in checks["api"]["fix"]
    assert "HARKEN_MQTT__HOST" in checks["mqtt"]["fix"]
    assert "not writable" in checks["store"]["detail"]


@pytest.mark.integration
def test_doctor_sees_a_broker_refusing_the_login(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secured = Broker(tmp_path, users={"harken": "right-password"})
    try:
        config = {
            "sources": [{"url": "demo"}],
            "store": {"path": str(tmp_path / "h.db")},
            "api": {"enabled": False},
            "mqtt": {
                "enabled": True,
                "host": "127.0.0.1",
                "port": secured.port,
                "username": "harken",
                "password": "wrong-password",
            },
        }
        code, checks = _doctor(config, tmp_path, capsys)
        assert code == 1
        assert checks["mqtt"]["status"] == "fail"
        assert "refused" in checks["mqtt"]["detail"] and "password" in checks["mqtt"]["fix"]
        config["mqtt"]["password"] = "right-password"
        code, checks = _doctor(config, tmp_path, capsys)
        assert code == 0 and checks["mqtt"]["detail"].endswith("as harken")
    finally:
        secured.stop()


def test_doctor_bad_config_and_bad_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, checks = _doctor({"mqtt": {"port": "abc"}}, tmp_path, capsys)
    assert code == 1 and checks["config"]["status"] == "fail"
    assert "mqtt.port" in checks["config"]["detail"]
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    code, checks = _doctor(
        {
            "model": str(broken),
            "sources": [{"url": "demo"}],
            "store": {"path": str(tmp_path / "h.db")},
            "api": {"enabled": False},
        },
        tmp_path,
        capsys,
    )
    assert code == 1 and checks["model"]["status"] == "fail"
    assert "harken export" in checks["model"]["fix"]


@pytest.mark.integration
def test_doctor_text_output_and_missing_ffmpeg(tmp_path: Path) -> None:
    """The real command: a url: source needs ffmpeg; without it on PATH that check fails."""
    config = tmp_path / "harken.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "sources": [{"name": "cam", "url": "url:rtsp://127.0.0.1:1/live"}],
                "store": {"path": str(tmp_path / "h.db")},
                "api": {"enabled": False},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARKEN_")}
    env.update(PATH=str(tmp_path / "empty-bin"), PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "doctor", "--config", str(config)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    cam = next(
        i for i, line in enumerate(lines) if line.startswith("FAIL") and "source cam" in line
    )
    assert "ffmpeg is not installed" in lines[cam]
    assert "fix: install ffmpeg" in lines[cam + 1]
    assert lines[-1] == "1 check(s) failed"


def _doctor_with_modules_broken(tmp_path: Path, config: dict, broken: dict[str, str]) -> dict[str, dict]:
    """The real `harken doctor` in a process where each named module fails to import as it
    does on a machine without it: `broken` maps module name -> the statement its import runs."""
    stubs = tmp_path / "stubs"
    for module, statement in broken.items():
        (stubs / module).mkdir(parents=True)
        (stubs / module / "__init__.py").write_text(statement + "\n")
    path = tmp_path / "harken.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARKEN_")}
    env["PYTHONPATH"] = os.pathsep.join([str(stubs), str(REPO)])
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "doctor", "--config", str(path), "--json", "--timeout", "3"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1, result.stderr
    return {c["name"]: c for c in json.loads(result.stdout)}


@pytest.mark.integration
def test_doctor_fails_when_the_api_cannot_serve_websockets(tmp_path: Path) -> None:
    """Without a WebSocket library uvicorn serves the page but refuses every upgrade, and the
    dashboard never goes live (issue 13): the doctor says so, and how to fix it."""
    hidden = 'raise ImportError("hidden by the test: not installed")'
    checks = _doctor_with_modules_broken(
        tmp_path,
        {"sources": [{"url": "demo"}], "store": {"path": str(tmp_path / "h.db")}, "api": {"port": _free_port()}},
        {"websockets": hidden, "wsproto": hidden},
    )
    ws = checks["websocket"]
    assert ws["status"] == "fail" and "the dashboard cannot go live" in ws["detail"]
    assert "websockets" in ws["fix"]
    assert checks["api"]["status"] == "ok"  # the port is fine; only the upgrade is not


@pytest.mark.integration
def test_doctor_without_portaudio_says_to_install_it_before_picking_a_device(tmp_path: Path) -> None:
    # What `import sounddevice` raises when libportaudio2 is not installed.
    checks = _doctor_with_modules_broken(
        tmp_path,
        {"store": {"path": str(tmp_path / "h.db")}, "api": {"enabled": False}},
        {"sounddevice": 'raise OSError("PortAudio library not found")'},
    )
    source = checks["source default"]
    assert source["status"] == "fail" and "PortAudio is not available" in source["detail"]
    assert source["fix"].startswith("install PortAudio first (Debian/Ubuntu: apt install libportaudio2)")
    assert "harken devices" in source["fix"]  # ...and only then pick a device
    assert checks["audio devices"]["status"] == "fail"
    assert "libportaudio2" in checks["audio devices"]["fix"]
    assert checks["websocket"]["status"] == "skip"  # api.enabled is false
