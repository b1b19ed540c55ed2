"""The dashboard behind a path prefix, and who is trusted without the token.

Unit level (the app, TestClient with chosen peer addresses): requests from the ingress
proxy's address pass without the token, everyone else keeps needing it, and a header such as
X-Ingress-Path proves nothing. Integration: the real daemon behind a real nginx that adds
the prefix two ways: as Home Assistant's ingress does (/api/hassio_ingress/<token>/, from
the proxy's own source address 127.0.0.2, X-Ingress-Path) and as a plain reverse proxy at
/harken/; REST, clips, the WebSocket and the page in headless Chromium, with screenshots.
"""

from __future__ import annotations

import getpass
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import yaml
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from service.api import create_app
from service.api.security import exposure_problem
from service.config import ApiConfig, ConfigError, Settings, load_settings
from service.daemon import Runtime, build_runtime
from tests.conftest import require, require_program, t3_scene
from tests.mqtt_helpers import free_port

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "artifacts"
TOKEN = "ingress-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SUPERVISOR = "172.30.32.2"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# ----------------------------------------------------------------- unit: the access rules


@pytest.fixture(scope="module")
def quiet_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wav") / "quiet.wav"
    sf.write(str(path), np.zeros(16000, dtype=np.float32), 16000, subtype="PCM_16")  # never played here
    return path


@pytest.fixture
def make_runtime(tmp_path: Path, quiet_wav: Path) -> Iterator:
    runtimes: list[Runtime] = []

    def make(api: dict) -> Runtime:
        settings = Settings.model_validate(
            {
                "sources": [{"name": "room", "url": f"file:{quiet_wav}"}],
                "store": {"path": str(tmp_path / f"h{len(runtimes)}.db")},
                "api": api,
            }
        )
        runtime = build_runtime(settings)
        runtimes.append(runtime)
        return runtime

    yield make
    for runtime in runtimes:
        runtime.executor.shutdown(wait=True)
        runtime.store.close()


def _client(runtime: Runtime, peer: str, host: str = "harken.local:8099") -> TestClient:
    return TestClient(create_app(runtime), base_url=f"http://{host}", client=(peer, 40000))


INGRESS_ON = {"ingress": {"enabled": True, "trusted_proxies": [SUPERVISOR]}}


def test_ingress_requests_need_no_token_and_others_still_do(make_runtime) -> None:
    runtime = make_runtime({"host": "0.0.0.0", "token": TOKEN, **INGRESS_ON})
    with _client(runtime, SUPERVISOR) as ingress:
        prefix = {"X-Ingress-Path": "/api/hassio_ingress/abc"}
        assert ingress.get("/api/status", headers=prefix).status_code == 200
        assert ingress.get("/api/events").status_code == 200  # the peer counts, not the header
        assert ingress.patch("/api/classes/glass_break", json={"enabled": False}).status_code == 200
        # (The WebSocket through ingress is tested with the real server and proxy below.)
    for peer in ("172.30.32.1", "172.30.33.2", "127.0.0.1"):  # Home Assistant core, another add-on, itself
        with _client(runtime, peer) as other:
            spoofed = {"X-Ingress-Path": "/api/hassio_ingress/abc", "X-Forwarded-For": SUPERVISOR}
            assert other.get("/api/status", headers=spoofed).status_code == 401, peer
            assert other.get("/api/status", headers=AUTH).status_code == 200, peer
            with pytest.raises(WebSocketDisconnect), other.websocket_connect("/api/live", headers=spoofed):
                pass
    # A dual-stack socket reports the IPv4 proxy as ::ffff:172.30.32.2.
    with _client(runtime, f"::ffff:{SUPERVISOR}") as mapped:
        assert mapped.get("/api/status").status_code == 200


def test_without_ingress_the_supervisor_address_is_nobody_special(make_runtime) -> None:
    runtime = make_runtime({"host": "127.0.0.1", "token": TOKEN})
    with _client(runtime, SUPERVISOR) as client:
        assert client.get("/api/status", headers={"X-Ingress-Path": "/x"}).status_code == 401


def test_ingress_without_token_answers_only_ingress_and_this_machine(make_runtime) -> None:
    api = ApiConfig.model_validate({"host": "0.0.0.0", **INGRESS_ON})
    assert exposure_problem(api) is None  # may listen on the add-on's network
    assert exposure_problem(ApiConfig(host="0.0.0.0")) is not None  # without ingress: refused
    runtime = make_runtime({"host": "0.0.0.0", **INGRESS_ON})
    with _client(runtime, SUPERVISOR, host="172.30.33.4:8099") as ingress:
        assert ingress.get("/api/status").status_code == 200
    with _client(runtime, "172.30.33.9", host="localhost") as neighbour:
        refused = neighbour.get("/api/status")
        assert refused.status_code == 403
        assert "only through Home Assistant ingress" in refused.json()["detail"]
        assert neighbour.get("/").status_code == 403  # not even the page
    with _client(runtime, "127.0.0.1", host="localhost:8099") as itself:
        assert itself.get("/api/status").status_code == 200
    with _client(runtime, "127.0.0.1", host="evil.example:8099") as rebinding:
        assert rebinding.get("/api/status").status_code == 400


def test_trusted_proxies_must_be_addresses(tmp_path: Path) -> None:
    config = tmp_path / "harken.yaml"
    config.write_text("api: {ingress: {enabled: true, trusted_proxies: [supervisor]}}\n")
    with pytest.raises(ConfigError, match=r"api\.ingress\.trusted_proxies: .*'supervisor' is not an IP address"):
        load_settings(config, environ={})
    config.write_text("api: {ingress: {enabled: true, trusted_proxies: [172.30.32.0/23]}}\n")
    assert load_settings(config, environ={}).api.ingress.trusted_proxies == ["172.30.32.0/23"]


# ----------------------------------------------------------------- integration: nginx + Chromium

INGRESS_PREFIX = "/api/hassio_ingress/Xy7_ingress-token"
PLAIN_PREFIX = "/harken"
PROXY_SOURCE = "127.0.0.2"  # nginx connects from here, as the Supervisor from 172.30.32.2

NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 128; }}
http {{
  access_log {root}/access.log;
  client_body_temp_path {root}/body;
  proxy_temp_path {root}/proxy;
  fastcgi_temp_path {root}/fastcgi;
  uwsgi_temp_path {root}/uwsgi;
  scgi_temp_path {root}/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  server {{
    listen 127.0.0.1:{port};
    # Like Home Assistant's ingress: the prefix stripped, announced in X-Ingress-Path, and the
    # request sent from the proxy's own address (which harken trusts).
    location {ingress}/ {{
      proxy_pass http://127.0.0.1:{upstream}/;
      proxy_bind {source};
      proxy_set_header X-Ingress-Path {ingress};
      proxy_set_header Host $host;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_buffering off;
    }}
    # A plain reverse proxy at /harken/: an ordinary client of harken, so the token counts.
    location = {plain} {{ return 301 {plain}/; }}
    location {plain}/ {{
      proxy_pass http://127.0.0.1:{upstream}/;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-Prefix {plain};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_buffering off;
    }}
    # Nothing outside the prefixes reaches harken: a link that forgets the prefix is a 404.
    location / {{ return 404; }}
  }}
}}
"""


@dataclass
class Stack:
    proxy: str  # http://127.0.0.1:<nginx port>
    direct: str  # harken itself
    root: Path

    def log(self) -> str:
        parts = [(self.root / "daemon.log").read_text(errors="replace")]
        error_log = self.root / "nginx" / "error.log"
        if error_log.exists():
            parts.append(error_log.read_text(errors="replace")[-3000:])
        return "\n".join(parts)


def _wait_until_up(url: str, process: subprocess.Popen, describe, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert process.poll() is None, f"exited early:\n{describe()}"
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"did not come up:\n{describe()}"
        time.sleep(0.1)


def _stop(process: subprocess.Popen) -> int | None:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
        return None


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    nginx = require_program("nginx")
    root = tmp_path_factory.mktemp("ingress")
    wav = root / "t3.wav"
    # 12 s loop: the alarm sounds 1.5-8.5 s; a short merge gap ends each event before the next loop.
    sf.write(str(wav), t3_scene(12.0, alarm_at_s=1.5), 16000, subtype="PCM_16")
    upstream, port = free_port(), free_port()
    config = {
        "sources": [{"name": "nursery", "url": f"file:{wav}", "realtime": True, "loop": True}],
        "classes": {"smoke_alarm": {"decision": {"merge_gap_s": 2.0}}},
        "store": {"path": str(root / "harken.db"), "clip_pre_s": 1.0, "clip_post_s": 0.5},
        "api": {"host": "127.0.0.1", "port": upstream, "token": TOKEN,
                "ingress": {"enabled": True, "trusted_proxies": [PROXY_SOURCE]}},
    }
    (root / "harken.yaml").write_text(yaml.safe_dump(config))
    nginx_root = root / "nginx"
    nginx_root.mkdir()
    conf = NGINX_CONF.format(root=nginx_root, port=port, upstream=upstream, source=PROXY_SOURCE,
                             ingress=INGRESS_PREFIX, plain=PLAIN_PREFIX)
    if os.geteuid() == 0:
        conf = f"user {getpass.getuser()};\n" + conf  # else nginx would switch to nobody
    (nginx_root / "nginx.conf").write_text(conf)
    with (root / "daemon.log").open("w") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "run", "--config", str(root / "harken.yaml")],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    proxy = subprocess.Popen(
        [nginx, "-p", str(nginx_root), "-e", str(nginx_root / "error.log"), "-c", str(nginx_root / "nginx.conf")],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    stack = Stack(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{upstream}", root)
    try:
        _wait_until_up(f"{stack.direct}/api/health", daemon, stack.log)
        _wait_until_up(f"{stack.proxy}{INGRESS_PREFIX}/api/health", proxy, stack.log)
        yield stack
    finally:
        code = _stop(daemon)
        _stop(proxy)
    assert code == 0, f"harken did not stop cleanly (exit {code}):\n{stack.log()}"


@pytest.mark.integration
def test_rest_and_clips_through_both_prefixes(stack: Stack) -> None:
    ingress, plain = f"{stack.proxy}{INGRESS_PREFIX}", f"{stack.proxy}{PLAIN_PREFIX}"
    # Through ingress Home Assistant has authenticated the user: no token.
    status = httpx.get(f"{ingress}/api/status", timeout=10)
    assert status.status_code == 200, stack.log()
    assert status.json()["sources"][0]["name"] == "nursery"
    # Everything else keeps the token: the plain proxy, harken itself, a forged ingress header.
    assert httpx.get(f"{plain}/api/status", timeout=10).status_code == 401
    assert httpx.get(f"{plain}/api/status", headers=AUTH, timeout=10).status_code == 200
    assert httpx.get(f"{stack.direct}/api/status", timeout=10).status_code == 401
    forged = {"X-Ingress-Path": INGRESS_PREFIX, "X-Forwarded-For": PROXY_SOURCE}
    assert httpx.get(f"{stack.direct}/api/status", headers=forged, timeout=10).status_code == 401
    # The page and its assets under both prefixes; the bare prefix is redirected to the folder.
    for base in (ingress, plain):
        page = httpx.get(f"{base}/", timeout=10)
        assert page.status_code == 200 and 'src="static/app.js"' in page.text
        assert httpx.get(f"{base}/static/app.js", timeout=10).status_code == 200
    assert httpx.get(plain, timeout=10).headers["location"].endswith(f"{PLAIN_PREFIX}/")
    # A clip link from the API, followed under the prefix (relative to harken's root).
    deadline = time.monotonic() + 40
    while True:
        events = httpx.get(f"{ingress}/api/events", timeout=10).json()["events"]
        clipped = [e for e in events if e["clip_url"]]
        if clipped or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert clipped, f"no event with a clip:\n{stack.log()}"
    clip = httpx.get(ingress + clipped[0]["clip_url"], timeout=10)
    assert clip.status_code == 200 and clip.content[:4] == b"RIFF"


@pytest.mark.integration
def test_websocket_through_both_prefixes(stack: Stack) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    ws_base = stack.proxy.replace("http://", "ws://")
    with connect(f"{ws_base}{INGRESS_PREFIX}/api/live", subprotocols=["harken"], open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"
        deadline = time.monotonic() + 10
        kinds: set[str] = set()
        while "live" not in kinds and time.monotonic() < deadline:
            kinds.add(json.loads(ws.recv(timeout=10))["type"])
        assert "live" in kinds
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{ws_base}{PLAIN_PREFIX}/api/live", subprotocols=["harken"], open_timeout=10)
    assert refused.value.response.status_code == 403
    with connect(f"{ws_base}{PLAIN_PREFIX}/api/live", subprotocols=["harken", f"bearer.{TOKEN}"],
                 open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"


@pytest.mark.integration
def test_dashboard_under_prefixes_in_chromium(stack: Stack) -> None:
    require(importlib.util.find_spec("playwright") is not None, "playwright for Python (pip install playwright)")
    require(Path(CHROMIUM).exists(), f"chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    requests: list[str] = []
    sockets: list[str] = []
    frames: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            # 1. In Home Assistant's sidebar: through ingress, no token asked for.
            page = browser.new_page(viewport={"width": 1100, "height": 760}, color_scheme="dark")
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            # Network requests only (not blob: URLs, the fetched clip handed to the <audio>).
            page.on("request", lambda r: requests.append(r.url) if r.url.startswith("http") else None)

            def on_socket(ws) -> None:
                sockets.append(ws.url)
                ws.on("framereceived", lambda payload: frames.append(str(payload)[:40]))

            page.on("websocket", on_socket)
            page.goto(f"{stack.proxy}{INGRESS_PREFIX}/")
            expect(page.locator(".class-card")).to_have_count(3, timeout=15_000)
            expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=15_000)
            # Live data arrives over the WebSocket (a `live` message sets data-live).
            expect(page.locator("body")).to_have_attribute("data-live", "1", timeout=15_000)
            assert page.locator("#token-dialog").evaluate("d => d.open") is False
            smoke = page.locator('.class-card[data-class="smoke_alarm"]')
            before = smoke.locator(".score").inner_text()
            expect(smoke.locator(".score")).not_to_have_text(before, timeout=15_000)  # a live update
            row = page.locator('.event[data-state="closed"]').first
            expect(row).to_be_visible(timeout=30_000)
            expect(row.locator(".play")).to_be_enabled(timeout=15_000)
            with page.expect_response(lambda r: r.url.endswith("/clip.wav")) as clip:
                row.locator(".play").click()
            assert clip.value.status == 200 and clip.value.url.startswith(f"{stack.proxy}{INGRESS_PREFIX}/api/events/")
            page.locator(".play.playing").wait_for(state="detached", timeout=15_000)  # played to its end
            expect(smoke).to_have_class("card class-card active", timeout=20_000)
            page.wait_for_timeout(2500)  # some of the alarm on the chart
            page.screenshot(path=str(ARTIFACTS / "dashboard-ingress.png"))
            live_url = stack.proxy.replace("http://", "ws://") + f"{INGRESS_PREFIX}/api/live"
            assert sockets and all(s == live_url for s in sockets), sockets
            assert any('"type": "live"' in f or '"type":"live"' in f for f in frames), frames[:5]
            outside = [u for u in requests if not u.startswith(f"{stack.proxy}{INGRESS_PREFIX}/")]
            assert outside == [], outside  # every asset, call and clip stayed under the prefix
            page.close()

            # 2. Behind a plain reverse proxy at /harken/: the page asks for the token.
            requests.clear()
            page = browser.new_page(viewport={"width": 1100, "height": 760}, color_scheme="light")
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("request", lambda r: requests.append(r.url) if r.url.startswith("http") else None)
            page.goto(f"{stack.proxy}{PLAIN_PREFIX}/")
            expect(page.locator("#token-dialog")).to_be_visible(timeout=15_000)
            page.locator("#token-input").fill(TOKEN)
            page.locator("#token-form button[type=submit]").click()
            expect(page.locator(".class-card")).to_have_count(3, timeout=15_000)
            expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=15_000)
            expect(page.locator("body")).to_have_attribute("data-live", "1", timeout=15_000)
            expect(page.locator(".event").first).to_be_visible(timeout=15_000)
            page.screenshot(path=str(ARTIFACTS / "dashboard-prefix.png"))
            outside = [u for u in requests if not u.startswith(f"{stack.proxy}{PLAIN_PREFIX}/")]
            assert outside == [], outside
        finally:
            browser.close()
    # 401s before the token was typed are expected console noise; nothing else.
    assert not [e for e in errors if "401" not in e], errors
