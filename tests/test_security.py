"""Who gets in, and what leaks: limits, CORS, tokens, secrets in logs, TLS to the broker,
hostile MQTT commands. Real harken processes, a real Mosquitto (with a test CA made here)
and a real HTTP receiver.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import getpass
import hmac
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import soundfile as sf
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from service.api import security
from service.api.limits import TokenBuckets
from service.config import MqttConfig
from service.controls import ClassControl, ClassControls
from service.sinks.ha_discovery import DeviceInfo
from service.sinks.mqtt import MqttSink
from service.sinks.store import EventStore
from tests.conftest import REPO_ROOT, require_program
from tests.harken_process import Harken, alarm_segment, quiet, wait_until
from tests.mqtt_helpers import Broker, Recorder, free_port
from tests.test_webhooks import Receiver

pytestmark = pytest.mark.integration

TOKEN = "sec-api-token-1f9c"
CLASSES = ["baby_cry", "smoke_alarm", "glass_break"]


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def _daemon(root: Path, api: dict[str, Any], **config: Any) -> Harken:
    scene = root / "quiet.wav"
    root.mkdir(parents=True, exist_ok=True)
    sf.write(str(scene), quiet(3.0), 16000, subtype="PCM_16")
    values = {
        "sources": [{"name": "hall", "url": f"file:{scene}", "realtime": True, "loop": True}],
        "store": {"path": str(root / "harken.db")},
        "api": {"port": free_port(), "token": TOKEN, **api},
        **config,
    }
    harken = Harken(root, values).start()
    try:
        harken.wait_api()
    except BaseException:
        harken.cleanup()
        raise
    return harken


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harken]:
    """A running harken whose API has a token and the default limits."""
    harken = _daemon(tmp_path_factory.mktemp("secure"), {})
    yield harken
    code, _elapsed = harken.terminate()
    harken.cleanup()
    assert code == 0


# --------------------------------------------------------------------------- request limits
def test_oversized_bodies_are_refused_declared_or_streamed(daemon: Harken) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    url = daemon.api + "/api/classes/smoke_alarm"
    big = b'{"enabled": true, "pad": "' + b"x" * 100_000 + b'"}'
    declared = httpx.patch(url, content=big, headers={**auth, "Content-Type": "application/json"}, timeout=10)
    assert declared.status_code == 413
    assert "at most 65536 bytes" in declared.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit counts what arrives
        yield big[:50_000]
        yield big[50_000:]

    streamed = httpx.patch(url, content=chunks(), headers={**auth, "Content-Type": "application/json"}, timeout=10)
    assert streamed.status_code == 413
    # Nothing was applied, and a normal body still works.
    assert httpx.get(daemon.api + "/api/classes", headers=auth, timeout=5).json()[1]["enabled"] is True
    ok = httpx.patch(url, json={"sensitivity": 0.5}, headers=auth, timeout=5)
    assert ok.status_code == 200


def test_cors_is_off(daemon: Harken) -> None:
    """No Access-Control-Allow-* headers: a page on another origin cannot read the API."""
    origin = {"Origin": "http://evil.example"}
    preflight = httpx.options(
        daemon.api + "/api/events",
        headers={**origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"},
        timeout=5,
    )
    assert preflight.status_code in (401, 405)
    plain = httpx.get(daemon.api + "/api/health", headers=origin, timeout=5)
    for response in (preflight, plain):
        assert not [h for h in response.headers if h.lower().startswith("access-control-")]


def test_rate_limit_per_client_with_retry_after(tmp_path: Path) -> None:
    harken = _daemon(tmp_path, {"rate_limit_per_s": 0.5, "rate_limit_burst": 5})
    try:
        time.sleep(3.0)  # the bucket refills from the start-up polling
        auth = {"Authorization": f"Bearer {TOKEN}"}
        # Until the first refusal: on a loaded machine the bucket refills (0.5/s) while the
        # requests are served, so the refusal may come a little after the burst of 5.
        codes: list[int] = []
        while len(codes) < 20 and 429 not in codes:
            codes.append(httpx.get(harken.api + "/api/status", headers=auth, timeout=5).status_code)
        assert codes[:5] == [200] * 5 and codes[-1] == 429, codes
        refused = httpx.get(harken.api + "/api/health", timeout=5)
        assert refused.status_code == 429
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= 2 and "too many requests" in refused.json()["detail"]
        time.sleep(retry_after + 0.1)
        assert httpx.get(harken.api + "/api/health", timeout=5).status_code == 200
    finally:
        code, _elapsed = harken.terminate()
        harken.cleanup()
    assert code == 0


def test_token_buckets_are_per_client_and_bounded() -> None:
    buckets = TokenBuckets(rate_per_s=1.0, burst=2, max_clients=3)
    assert [buckets.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 1.0]
    assert buckets.take("b", 0.0) == 0.0  # another client has its own bucket
    assert buckets.take("a", 1.0) == 0.0  # one token back after a second
    for client in ("c", "d", "e"):
        buckets.take(client, 1.0)
    assert len(buckets._buckets) == 3  # the least recently seen are forgotten


# --------------------------------------------------------------------------- tokens
def test_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every token check (HTTP and WebSocket) goes through hmac.compare_digest."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", spy)
    from service.api.app import create_app
    from service.config import Settings
    from service.daemon import build_runtime

    runtime = build_runtime(Settings.model_validate({
        "sources": [{"name": "x", "url": "demo"}],
        "store": {"path": str(tmp_path / "ct.db")},
        "api": {"token": TOKEN},
    }))
    try:
        client = TestClient(create_app(runtime))
        assert client.get("/api/status", headers={"Authorization": "Bearer nope-nope"}).status_code == 401
        assert client.get("/api/status", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        with pytest.raises(WebSocketDisconnect), client.websocket_connect("/api/live?token=nope-nope"):
            pass
    finally:
        runtime.executor.shutdown(wait=True)
        runtime.store.close()
    assert len(calls) == 3 and all(a == TOKEN.encode() for a, _ in calls)


def test_health_is_the_only_open_endpoint(daemon: Harken) -> None:
    schema = httpx.get(daemon.api + "/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).json()
    open_paths = []
    for path, operations in schema["paths"].items():
        if "{" in path:
            path = path.replace("{event_id}", "x").replace("{name}", "smoke_alarm")
        for method in operations:
            response = httpx.request(method.upper(), daemon.api + path, timeout=5,
                                     json={} if method in ("post", "patch") else None)
            if response.status_code != 401:
                open_paths.append((method, path, response.status_code))
            time.sleep(0.02)
    assert open_paths == [("get", "/api/health", 200)]
    assert httpx.get(daemon.api + "/openapi.json", timeout=5).status_code in (200, 401)


# --------------------------------------------------------------------------- secrets
def test_secrets_never_reach_the_log(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """API token, MQTT password, webhook secret, a token in a webhook header and one in its
    URL: none of them appears in a debug-level log of a run that uses and fails with all."""
    passwd = require_program("mosquitto_passwd")
    password_file = tmp_path / "passwd"
    mqtt_password = "mqtt-pw-7c1e9a"
    subprocess.run([passwd, "-b", "-c", str(password_file), "harken", mqtt_password],
                   check=True, capture_output=True, timeout=10)
    broker = Broker(tmp_path / "broker", require_program("mosquitto"), require_program("mosquitto_pub"),
                    password_file=password_file, credentials=("harken", mqtt_password))
    request.addfinalizer(broker.stop)
    broker.start()
    webhook_secret, header_token, url_token = "whsec-5d2b77", "ntfy-hdr-33af", "url-tok-90be"

    def flaky(_request: Any, index: int) -> tuple[int, dict[str, str], bytes]:
        return (500, {}, b"try later") if index == 0 else (200, {}, b"{}")

    receiver = Receiver(script=flaky).start()
    request.addfinalizer(receiver.stop)
    node = "secrets"
    events = Recorder(broker.port, [f"harken/{node}/events"], credentials=("harken", mqtt_password))
    request.addfinalizer(events.close)
    harken = Harken(tmp_path / "harken", {
        "sources": [{"name": "hall", "url": "-"}],
        "store": {"path": str(tmp_path / "harken" / "harken.db")},
        "api": {"port": free_port(), "token": TOKEN},
        "log": {"level": "debug"},
        "mqtt": {"enabled": True, "host": "127.0.0.1", "port": broker.port, "node_id": node,
                 "username": "harken", "password": mqtt_password},
        "webhooks": [{"name": "phone", "url": receiver.url(f"/hook?auth={url_token}"), "secret": webhook_secret,
                      "headers": {"Authorization": f"Bearer {header_token}"}, "retry_base_s": 0.05,
                      "retry_max_s": 0.2}],
    }, stdin=True).start()
    request.addfinalizer(harken.cleanup)
    harken.wait_api()
    harken.feed(alarm_segment(seed=0))
    wait_until(lambda: len(receiver.received()) >= 2, 30, "a failed and a good webhook delivery")
    events.wait_for(lambda ms: len(ms) >= 2, 20, "the event over MQTT")
    assert receiver.received()[0].headers["authorization"] == f"Bearer {header_token}"  # it was used
    for token in ("wrong-guess", TOKEN):
        httpx.get(harken.api + "/api/status", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    status = harken.get("/api/status", TOKEN).json()
    code, _elapsed = harken.terminate()
    assert code == 0
    log = harken.log()
    assert "DEBUG" in log and "HTTP 500" in log  # the failure paths did log
    for secret in (TOKEN, mqtt_password, webhook_secret, header_token, url_token):
        assert secret not in log, f"{secret!r} is in the log"
        assert secret not in json.dumps(status), f"{secret!r} is in /api/status"


def test_config_errors_do_not_echo_secrets(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARKEN_")}
    env.update(HARKEN_API__TOKEN="tiny7", HARKEN_MQTT__PASSWORD="[1, 2]", PYTHONPATH=str(REPO_ROOT))
    config = tmp_path / "h.yaml"
    config.write_text("webhooks:\n  - url: http://127.0.0.1:9/x\n    secret: ''\n")
    result = subprocess.run([sys.executable, "-m", "service.cli", "check-config", str(config)],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "api.token" in output and "mqtt.password" in output and "webhooks.0.secret" in output
    assert "tiny7" not in output and "[1, 2]" not in output and "value not shown" in output


def test_refused_mqtt_credentials_are_logged_without_the_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest
) -> None:
    passwd = require_program("mosquitto_passwd")
    password_file = tmp_path / "passwd"
    subprocess.run([passwd, "-b", "-c", str(password_file), "harken", "right-pw-1"],
                   check=True, capture_output=True, timeout=10)
    broker = Broker(tmp_path / "broker", require_program("mosquitto"), require_program("mosquitto_pub"),
                    password_file=password_file, credentials=("harken", "right-pw-1"))
    request.addfinalizer(broker.stop)
    broker.start()
    store = EventStore(tmp_path / "h.db")
    sink = _sink(store, MqttConfig(enabled=True, host="127.0.0.1", port=broker.port, node_id="pw",
                                   username="harken", password="wrong-pw-2", reconnect_max_s=30.0))
    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        await sink.start()
        assert "refused the credentials" in (sink.status()["error"] or "")
        await sink.stop()

    try:
        asyncio.run(asyncio.wait_for(scenario(), 20))
    finally:
        store.close()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "refused the credentials" in text and "wrong-pw-2" not in text


# --------------------------------------------------------------------------- TLS to the broker
def _sink(store: EventStore, config: MqttConfig) -> MqttSink:
    controls = ClassControls([ClassControl(name) for name in CLASSES])
    device = DeviceInfo(node_id=config.node_id, sw_version="test", model_version="test-model 1")
    return MqttSink(config, store, controls, CLASSES, device)


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, issuer_key: Any,
                 ca: bool, names: list[x509.GeneralName] | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False), critical=True)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_pem(path: Path, obj: Any) -> Path:
    if isinstance(obj, x509.Certificate):
        path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return path


def _ca(folder: Path, name: str) -> tuple[Path, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = _certificate(name, key, subject, key, ca=True)
    return _write_pem(folder / f"{name}.pem", cert), cert, key


def test_tls_to_the_broker_verifies_the_certificate(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A Mosquitto with a certificate from a CA made here: harken connects when it trusts that
    CA and the name matches; a foreign CA or a wrong host name is refused with a clear error."""
    mosquitto, mosquitto_pub = require_program("mosquitto"), require_program("mosquitto_pub")
    ca_file, ca_cert, ca_key = _ca(tmp_path, "harken-test-ca")
    other_ca_file, _, _ = _ca(tmp_path, "someone-else-ca")
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _certificate("localhost", server_key, ca_cert.subject, ca_key, ca=False,
                               names=[x509.DNSName("localhost")])
    cert_file = _write_pem(tmp_path / "server.pem", server_cert)
    key_file = _write_pem(tmp_path / "server.key", server_key)
    tls_port = free_port()
    conf = "\n".join([
        "per_listener_settings false",
        "allow_anonymous true",
        f"user {getpass.getuser()}",
        "listener PORT 127.0.0.1",  # plain, only for the helper's readiness probe
        f"listener {tls_port} 127.0.0.1",
        f"cafile {ca_file}", f"certfile {cert_file}", f"keyfile {key_file}",
        "log_dest stderr", "log_type error", "log_type warning",
    ]) + "\n"
    broker = Broker(tmp_path / "broker", mosquitto, mosquitto_pub, conf_text=conf)
    request.addfinalizer(broker.stop)
    broker.start()

    def outcome(host: str, **tls: Any) -> dict[str, Any]:
        store = EventStore(tmp_path / f"{host}-{len(tls)}-{time.monotonic_ns()}.db")
        config = MqttConfig(enabled=True, host=host, port=tls_port, node_id="tls", reconnect_min_s=5.0,
                            reconnect_max_s=5.0, tls={"enabled": True, **tls})
        sink = _sink(store, config)

        async def scenario() -> dict[str, Any]:
            await sink.start()
            status = sink.status()
            await sink.stop()
            return status

        try:
            return asyncio.run(asyncio.wait_for(scenario(), 20))
        finally:
            store.close()

    trusted = outcome("localhost", ca_file=str(ca_file))
    assert trusted["state"] == "ok" and trusted["connected"], trusted
    foreign = outcome("localhost", ca_file=str(other_ca_file))
    assert foreign["state"] == "degraded" and "certificate verify failed" in foreign["error"], foreign
    wrong_name = outcome("127.0.0.1", ca_file=str(ca_file))
    assert wrong_name["state"] == "degraded" and "certificate verify failed" in wrong_name["error"], wrong_name
    # verify: false is the user's explicit choice (documented as insecure): it connects.
    insecure = outcome("127.0.0.1", ca_file=str(other_ca_file), verify=False)
    assert insecure["state"] == "ok", insecure


# --------------------------------------------------------------------------- hostile MQTT commands
def test_hostile_mqtt_commands_are_ignored_with_one_short_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest
) -> None:
    broker = Broker(tmp_path / "broker", require_program("mosquitto"), require_program("mosquitto_pub"))
    request.addfinalizer(broker.stop)
    broker.start()
    node = "hostile"
    base = f"harken/{node}"
    store = EventStore(tmp_path / "h.db")
    sink = _sink(store, MqttConfig(enabled=True, host="127.0.0.1", port=broker.port, node_id=node))
    sender = Recorder(broker.port, [f"{base}/baby_cry/enabled"])
    request.addfinalizer(sender.close)
    caplog.set_level(logging.INFO, logger="service.sinks.mqtt")
    garbage: list[tuple[str, bytes, bool]] = [
        (f"{base}/smoke_alarm/enabled/set", b"O" * 1_000_000, False),  # a megabyte
        (f"{base}/smoke_alarm/sensitivity/set", b'{"value": 0.1}', False),  # JSON, not a number
        (f"{base}/smoke_alarm/sensitivity/set", b"[0.1]", False),
        (f"{base}/smoke_alarm/sensitivity/set", b"1e999", False),  # inf
        (f"{base}/smoke_alarm/snooze/set", b"\x00\x01\x02", False),
        (f"{base}/smoke_alarm/snooze/set", b"1" * 400, False),
        (f"{base}/smoke_alarm/enabled/set/extra", b"OFF", False),  # a level too deep
        (f"{base}/" + "x" * 300 + "/enabled/set", b"OFF", False),
    ]

    async def scenario() -> None:
        # A retained command waits on the broker and reaches harken at every (re)subscribe:
        # applying it would undo the user's later changes on each reconnect.
        await asyncio.to_thread(sender.publish, f"{base}/smoke_alarm/enabled/set", "OFF", True)
        await sink.start()
        for topic, payload, retain in garbage:
            await asyncio.to_thread(sender.publish, topic, payload, retain)
        await asyncio.to_thread(sender.publish, f"{base}/baby_cry/enabled/set", "OFF")
        deadline = time.monotonic() + 10
        while sink.controls.get("baby_cry").enabled and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await sink.stop()

    try:
        asyncio.run(asyncio.wait_for(scenario(), 30))
        status = sink.status()
    finally:
        store.close()
    smoke = sink.controls.get("smoke_alarm")
    assert smoke.enabled and smoke.sensitivity == 0.5 and not smoke.snoozed()
    assert not sink.controls.get("baby_cry").enabled  # the good command after the garbage worked
    ignored = [r for r in caplog.records if "ignored" in r.getMessage()]
    # Filtered by the subscription (a level too deep) never reaches harken; the rest, and the
    # retained command, are counted.
    assert status["commands_ignored"] == len(ignored) >= len(garbage)
    assert any("retained commands are not applied" in r.getMessage() for r in ignored)
    assert all(len(r.getMessage()) < 300 and "\n" not in r.getMessage() for r in ignored)
    assert not any(r.exc_info for r in caplog.records)
