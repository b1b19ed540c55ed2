"""`harken doctor`: checks what a running harken depends on and says how to fix what is wrong.

Each check returns a `Check` (OK, WARN, FAIL or SKIP) with one line of detail and, when
something is wrong, one line on how to fix it. Nothing here changes state: the broker
check connects and disconnects under its own client id (a running daemon keeps its
session), webhook targets are resolved and connected to but sent no request, and the
store check takes a write lock and rolls it back.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import shutil
import socket
import sqlite3
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from service.config import Settings, SourceConfig

log = logging.getLogger(__name__)

Status = Literal["ok", "warn", "fail", "skip"]
DEFAULT_PORTS = {"http": 80, "https": 443, "rtsp": 554, "rtsps": 322, "rtmp": 1935, "srt": 9000}
MIN_FREE_BYTES = 200 * 1024 * 1024


@dataclass(frozen=True)
class Check:
    """The outcome of one check: what was checked, what was found, how to fix it."""

    name: str
    status: Status
    detail: str
    fix: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)


def run_checks(settings: Settings, timeout_s: float = 5.0) -> list[Check]:
    """Every check, in the order a user would fix things."""
    checks = [check_model(settings)]
    checks += check_audio_devices(settings)
    for source in settings.sources:
        checks.append(check_source(source, timeout_s))
    checks.append(check_store(settings))
    checks.append(check_api(settings))
    checks.append(check_websocket(settings, timeout_s))
    checks.append(check_mqtt(settings, timeout_s))
    checks += check_webhooks(settings, timeout_s)
    return checks


# ----------------------------------------------------------------- model


def check_model(settings: Settings) -> Check:
    from service.contract import ContractError
    from service.daemon import StartupError, class_params
    from service.detector import Detector

    try:
        detector = Detector.load(settings.model)
        class_params(settings, detector)
    except (ContractError, StartupError) as exc:
        fix = (
            "remove `model:` to use the bundled model, or export the model with `harken export`"
            if settings.model
            else "reinstall harken: the bundled model is damaged"
        )
        if isinstance(exc, StartupError):
            fix = "fix the `classes:` section of the config to match the model's classes"
        return Check("model", "fail", str(exc), fix)
    c = detector.contract
    return Check(
        "model",
        "ok",
        f"{c.model_name} {c.model_version} ({', '.join(c.class_names)}), "
        f"contract matches this harken",
    )


# ----------------------------------------------------------------- audio


def check_audio_devices(settings: Settings) -> list[Check]:
    """PortAudio and the input devices; a failure only when a mic source needs them."""
    from service.audio.sources import SourceError, parse_source_url

    needs_mic = any(parse_source_url(s.url).kind == "mic" for s in settings.sources)
    try:
        from service.audio.mic import list_input_devices

        devices = list_input_devices()
    except SourceError as exc:
        status: Status = "fail" if needs_mic else "warn"
        return [
            Check(
                "audio devices",
                status,
                str(exc),
                "install PortAudio (Debian/Ubuntu: apt install libportaudio2)",
            )
        ]
    if not devices:
        status = "fail" if needs_mic else "skip"
        return [
            Check(
                "audio devices",
                status,
                "no audio input device found",
                "connect a microphone; check `arecord -l`; in Docker pass --device /dev/snd "
                "and --group-add audio; the user running harken must be in group audio"
                if needs_mic
                else None,
            )
        ]
    default = next((d["name"] for d in devices if d["default"]), "none")
    return [Check("audio devices", "ok", f"{len(devices)} input device(s); default: {default}")]


def check_source(source: SourceConfig, timeout_s: float) -> Check:
    from service.audio.sources import SourceError, parse_source_url

    name = f"source {source.name}"
    spec = parse_source_url(source.url)
    if spec.kind == "mic":
        from service.audio.mic import _sounddevice

        try:
            _sounddevice()
        except SourceError as exc:
            # `harken devices` fails the same way until PortAudio is there: that comes first.
            return Check(
                name,
                "fail",
                str(exc),
                "install PortAudio first (Debian/Ubuntu: apt install libportaudio2), then pick "
                "a device from `harken devices` (mic:INDEX or mic:NAME)",
            )
        try:
            return Check(name, "ok", _check_mic(spec.target))
        except SourceError as exc:
            return Check(
                name,
                "fail",
                str(exc),
                "pick a device from `harken devices` "
                "(mic:INDEX or mic:NAME), or plug the microphone in",
            )
    if spec.kind == "demo":
        return Check(name, "ok", "the bundled demo recording")
    if spec.kind == "stdin":
        return Check(name, "ok", "reads PCM or WAV from standard input")
    if spec.kind == "file":
        return _check_file(name, Path(spec.target or ""))
    # url: ffmpeg decodes it; the host must answer.
    if shutil.which("ffmpeg") is None:
        return Check(
            name,
            "fail",
            "ffmpeg is not installed; url: sources need it",
            "install ffmpeg (Debian/Ubuntu: apt install ffmpeg)",
        )
    target = spec.target or ""
    parts = urlsplit(target)
    port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    if not parts.hostname or port is None:
        return Check(name, "ok", f"ffmpeg present; {parts.scheme}:// not probed")
    problem = _reach(parts.hostname, port, timeout_s)
    if problem:
        return Check(
            name,
            "fail",
            f"{_redact(target)}: {problem}",
            "check the camera's address and that it is on; harken retries meanwhile",
        )
    return Check(name, "ok", f"ffmpeg present; {parts.hostname}:{port} reachable")


def _check_mic(target: str | None) -> str:
    from service.audio.mic import _sounddevice, resolve_device
    from service.audio.sources import SourceError

    sd = _sounddevice()
    device = resolve_device(target)
    if device is None and (not sd.default.device or sd.default.device[0] < 0):
        raise SourceError("no default input device")
    try:
        info = sd.query_devices(device, "input")
        # Opens nothing: asks PortAudio whether the device takes these settings.
        sd.check_input_settings(device=device, channels=1, samplerate=info["default_samplerate"])
    except Exception as exc:
        raise SourceError(f"microphone {target or 'default'}: {exc}") from None
    return f"{info['name']} ({info['max_input_channels']} ch, {info['default_samplerate']:.0f} Hz)"


def _check_file(name: str, path: Path) -> Check:
    import soundfile as sf

    if not path.is_file():
        return Check(name, "fail", f"{path}: no such file", "fix the path after file:")
    try:
        info = sf.info(str(path))
    except Exception:
        if shutil.which("ffmpeg") is None:
            return Check(
                name,
                "fail",
                f"{path}: not WAV/FLAC/OGG and ffmpeg is not installed",
                "install ffmpeg (apt install ffmpeg) or convert the file to WAV/FLAC",
            )
        return Check(name, "ok", f"{path}: decoded through ffmpeg")
    return Check(
        name, "ok", f"{path}: {info.duration:.1f} s, {info.samplerate} Hz, {info.channels} ch"
    )


# ----------------------------------------------------------------- store


def check_store(settings: Settings) -> Check:
    from service.sinks.store import default_store_path

    path = Path(settings.store.path or default_store_path())
    fix = (
        f"make {path.parent} writable for the user running harken, or set store.path "
        "(HARKEN_STORE__PATH) to a writable place"
    )
    # The directory harken would create is not created here: its nearest existing
    # ancestor must let us write (a temporary file, removed at once).
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".harken-doctor-"):
            pass
    except OSError as exc:
        return Check("store", "fail", f"{existing} is not writable ({exc.strerror or exc})", fix)
    if path.exists():
        try:
            conn = sqlite3.connect(str(path), timeout=2.0, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")  # the write lock the daemon needs, rolled back
                conn.execute("ROLLBACK")
            finally:
                conn.close()
        except sqlite3.Error as exc:
            return Check("store", "fail", f"{path}: {exc}", fix)
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        return Check(
            "store",
            "warn",
            f"{path}: only {free // 2**20} MiB free",
            "free disk space or lower store.retention_days",
        )
    state = "exists" if path.exists() else "will be created"
    return Check("store", "ok", f"{path} writable ({state}; {free // 2**30} GiB free)")


# ----------------------------------------------------------------- api


def check_api(settings: Settings) -> Check:
    api = settings.api
    if not api.enabled:
        return Check("api", "skip", "api.enabled is false")
    # With ingress on, no token is fine: only the ingress proxy and loopback are answered.
    if not _is_loopback(api.host) and not api.token and not api.ingress.enabled:
        return Check(
            "api",
            "fail",
            f"api.host {api.host} listens beyond this machine without a token",
            "set api.token (HARKEN_API__TOKEN) to a long random secret, "
            "e.g. `openssl rand -hex 16`",
        )
    with socket.socket(socket.AF_INET6 if ":" in api.host else socket.AF_INET) as probe:
        try:
            probe.bind((api.host, api.port))
        except OSError as exc:
            return Check(
                "api",
                "warn",
                f"cannot listen on {api.host}:{api.port} ({exc.strerror or exc})",
                "harken may already be running; otherwise pick another api.port",
            )
    return Check(
        "api",
        "ok",
        f"http://{api.host}:{api.port} free to listen" + (", token set" if api.token else ""),
    )


def check_websocket(settings: Settings, timeout_s: float) -> Check:
    """The dashboard's live feed (WS /api/live): a real WebSocket handshake against the
    daemon's server settings, served on a free loopback port (the API port may be in use)."""
    from service.api.server import WEBSOCKET_FIX, probe_websocket

    if not settings.api.enabled:
        return Check("websocket", "skip", "api.enabled is false")
    problem = probe_websocket(timeout_s)
    if problem:
        return Check("websocket", "fail", f"the dashboard cannot go live: {problem}", WEBSOCKET_FIX)
    return Check("websocket", "ok", "the API serves WebSockets (live scores and events for the dashboard)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ----------------------------------------------------------------- mqtt


def check_mqtt(settings: Settings, timeout_s: float) -> Check:
    m = settings.mqtt
    if not m.enabled:
        return Check("mqtt", "skip", "mqtt.enabled is false")
    where = f"{m.host}:{m.port}"
    problem = _reach(m.host, m.port, timeout_s)
    if problem:
        return Check(
            "mqtt",
            "fail",
            f"broker {where}: {problem}",
            "start the broker, or set mqtt.host / mqtt.port (HARKEN_MQTT__HOST, "
            "HARKEN_MQTT__PORT) to where it runs",
        )
    try:
        refused = _mqtt_connack(settings, timeout_s)
    except ssl.SSLError as exc:
        return Check(
            "mqtt",
            "fail",
            f"broker {where}: TLS failed ({exc.reason or exc})",
            "check mqtt.tls.ca_file (the CA that signed the broker's certificate) "
            "and that mqtt.host matches the certificate",
        )
    except (OSError, TimeoutError) as exc:
        return Check(
            "mqtt",
            "fail",
            f"broker {where}: {exc}",
            "is it an MQTT broker? is mqtt.tls.enabled right for this port?",
        )
    if refused:
        return Check(
            "mqtt",
            "fail",
            f"broker {where} refused the connection: {refused}",
            "check mqtt.username / mqtt.password (HARKEN_MQTT__USERNAME, "
            "HARKEN_MQTT__PASSWORD) against the broker's password file and ACL",
        )
    login = f" as {m.username}" if m.username else " anonymously"
    return Check(
        "mqtt",
        "ok",
        f"broker {where} accepted a connection{login}" + (" over TLS" if m.tls.enabled else ""),
    )


def _mqtt_connack(settings: Settings, timeout_s: float) -> str | None:
    """Connect, wait for CONNACK, disconnect. None when accepted, else the broker's reason."""
    import os

    import paho.mqtt.client as mqtt

    m = settings.mqtt
    # Its own client id: reusing the daemon's would make the broker drop the daemon's session.
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"harken-doctor-{os.getpid()}")
    if m.username:
        client.username_pw_set(m.username, m.password)
    if m.tls.enabled:
        client.tls_set(
            ca_certs=str(m.tls.ca_file) if m.tls.ca_file else None,
            certfile=str(m.tls.cert_file) if m.tls.cert_file else None,
            keyfile=str(m.tls.key_file) if m.tls.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED if m.tls.verify else ssl.CERT_NONE,
        )
        client.tls_insecure_set(not m.tls.verify)
    answer: dict[str, str | None] = {}
    done = threading.Event()

    def on_connect(
        _client: object, _userdata: object, _flags: object, reason: object, _props: object = None
    ) -> None:
        answer["refused"] = str(reason) if getattr(reason, "is_failure", False) else None
        done.set()

    client.on_connect = on_connect
    client.connect(m.host, m.port, keepalive=max(5, int(timeout_s) + 5))
    deadline = time.monotonic() + timeout_s
    try:
        while not done.is_set():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no CONNACK within {timeout_s:.0f} s")
            code = client.loop(timeout=0.1)
            if code != mqtt.MQTT_ERR_SUCCESS and not done.is_set():
                raise OSError(f"connection lost before CONNACK ({mqtt.error_string(code)})")
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()
            client.loop(timeout=0.1)
    return answer.get("refused")


# ----------------------------------------------------------------- webhooks


def check_webhooks(settings: Settings, timeout_s: float) -> list[Check]:
    if not settings.webhooks:
        return [Check("webhooks", "skip", "no webhook targets configured")]
    checks = []
    for index, hook in enumerate(settings.webhooks):
        name = f"webhook {hook.name or index}"
        parts = urlsplit(hook.url)
        port = parts.port or DEFAULT_PORTS[parts.scheme]
        host = parts.hostname or ""
        problem = _reach(host, port, timeout_s, tls=parts.scheme == "https")
        if problem:
            checks.append(
                Check(
                    name,
                    "fail",
                    f"{_redact(hook.url)}: {problem}",
                    f"check webhooks[{index}].url and that the server is up; "
                    "harken keeps notifications in its outbox and retries",
                )
            )
        else:
            checks.append(
                Check(
                    name,
                    "ok",
                    f"{host}:{port} reachable"
                    + (" (TLS certificate valid)" if parts.scheme == "https" else "")
                    + "; nothing sent",
                )
            )
    return checks


# ----------------------------------------------------------------- network helpers


def _reach(host: str, port: int, timeout_s: float, tls: bool = False) -> str | None:
    """None when `host:port` resolves and accepts TCP (and TLS), else what went wrong."""
    try:
        addresses = _with_timeout(
            lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout_s
        )
    except socket.gaierror as exc:
        return f"cannot resolve {host} ({exc.strerror or exc})"
    except FutureTimeout:
        return f"resolving {host} took longer than {timeout_s:.0f} s"
    last = "no address"
    for family, kind, proto, _, address in addresses:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(timeout_s)
                sock.connect(address)
                if tls:
                    context = ssl.create_default_context()
                    with context.wrap_socket(sock, server_hostname=host):
                        pass
                return None
        except ssl.SSLError as exc:
            return f"TLS handshake with {host}:{port} failed ({exc.reason or exc})"
        except OSError as exc:
            last = f"cannot connect to {host}:{port} ({exc.strerror or exc})"
    return last


def _with_timeout(call: Callable[[], list], timeout_s: float) -> list:  # type: ignore[type-arg]
    # getaddrinfo has no timeout of its own; a stuck resolver must not hang the doctor.
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(call).result(timeout=timeout_s)
    finally:
        pool.shutdown(wait=False)


def _redact(url: str) -> str:
    """A URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return parts._replace(netloc=netloc).geturl()
    return url


# ----------------------------------------------------------------- output


MARKS = {"ok": "OK", "warn": "WARN", "fail": "FAIL", "skip": "SKIP"}


def format_checks(checks: list[Check]) -> str:
    """One line per check, plus an indented `fix:` line under each that is not OK."""
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{MARKS[c.status]:<5} {c.name:<{width}}  {c.detail}")
        if c.fix and c.status in ("fail", "warn"):
            lines.append(f"{'':<5} {'':<{width}}  fix: {c.fix}")
    failed = sum(c.status == "fail" for c in checks)
    lines.append(f"{failed} check(s) failed" if failed else "all checks passed")
    return "\n".join(lines)
