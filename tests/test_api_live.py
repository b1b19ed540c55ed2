"""The real daemon process serving the API: WebSocket, metrics and the dashboard in Chromium.

`harken run` plays a looping T3 smoke-alarm scene at real time with a token configured;
a WebSocket client receives scores and an event; headless Chromium (Playwright) opens the
dashboard, sees live scores and an event row, marks a false alarm and saves screenshots
to artifacts/.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import soundfile as sf
import yaml

from tests.conftest import require, t3_scene

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts"
TOKEN = "live-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.integration


@dataclass
class Daemon:
    url: str
    root: Path
    process: subprocess.Popen

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/api/live"

    def log(self) -> str:
        return (self.root / "daemon.log").read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("live")
    wav = root / "t3.wav"
    # 12 s loop: the alarm sounds 1.5-8.5 s; a short merge gap ends each event before the next loop.
    sf.write(str(wav), t3_scene(12.0, alarm_at_s=1.5), 16000, subtype="PCM_16")
    port = free_port()
    config = {
        "sources": [{"name": "nursery", "url": f"file:{wav}", "realtime": True, "loop": True}],
        "classes": {"smoke_alarm": {"decision": {"merge_gap_s": 2.0}}},
        "store": {"path": str(root / "harken.db"), "clip_pre_s": 1.0, "clip_post_s": 0.5},
        "api": {"host": "127.0.0.1", "port": port, "token": TOKEN},
    }
    (root / "harken.yaml").write_text(yaml.safe_dump(config))
    log = (root / "daemon.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "run", "--config", str(root / "harken.yaml")],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    daemon = Daemon(f"http://127.0.0.1:{port}", root, process)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"harken exited early:\n{daemon.log()}"
            try:
                if httpx.get(f"{daemon.url}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"harken did not come up:\n{daemon.log()}"
            time.sleep(0.1)
        yield daemon
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
            code = None
        log.close()
    assert code == 0, f"harken did not stop cleanly (exit {code}):\n{daemon.log()}"


def receive_until(ws, wanted: set[str], timeout_s: float) -> dict[str, list[dict]]:
    """Collect messages by type until every wanted type has arrived (or time is up)."""
    seen: dict[str, list[dict]] = {}
    deadline = time.monotonic() + timeout_s
    while not wanted <= set(seen) and time.monotonic() < deadline:
        try:
            message = json.loads(ws.recv(timeout=max(0.05, deadline - time.monotonic())))
        except TimeoutError:
            break
        seen.setdefault(message["type"], []).append(message)
    return seen


def test_websocket_streams_scores_level_and_events(daemon: Daemon) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with pytest.raises(InvalidStatus) as refused:
        connect(daemon.ws_url, open_timeout=5)
    assert refused.value.response.status_code == 403
    with pytest.raises(InvalidStatus):
        connect(daemon.ws_url, subprotocols=["harken", "bearer.wrong-token"], open_timeout=5)

    # The browser way: the token as a subprotocol next to "harken".
    with connect(daemon.ws_url, subprotocols=["harken", f"bearer.{TOKEN}"], open_timeout=5) as ws:
        assert ws.subprotocol == "harken"
        hello = json.loads(ws.recv(timeout=5))
        assert hello["type"] == "hello" and hello["sources"] == ["nursery"]
        assert [c["name"] for c in hello["classes"]] == ["baby_cry", "smoke_alarm", "glass_break"]
        seen = receive_until(ws, {"live", "event"}, timeout_s=25)
    assert "live" in seen and "event" in seen, f"got {sorted(seen)}:\n{daemon.log()}"
    live = seen["live"][-1]
    assert live["source"] == "nursery"
    assert set(live["scores"]) == {"baby_cry", "smoke_alarm", "glass_break"}
    assert -120 <= live["level_dbfs"] <= 0
    event = seen["event"][0]
    assert event["phase"] in ("start", "end") and event["event"]["class"] == "smoke_alarm"

    # Scripts may pass the token as a query parameter.
    with connect(f"{daemon.ws_url}?token={TOKEN}", open_timeout=5) as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "hello"


def test_metrics_count_audio_inference_and_events(daemon: Daemon) -> None:
    deadline = time.monotonic() + 20
    while True:
        text = httpx.get(f"{daemon.url}/metrics", headers=AUTH, timeout=5).text
        values = {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line and not line.startswith("#")
        }
        if (
            values['harken_events_total{source="nursery",class="smoke_alarm"}'] >= 1
            or time.monotonic() > deadline
        ):
            break
        time.sleep(0.5)
    assert values['harken_events_total{source="nursery",class="smoke_alarm"}'] >= 1
    assert values['harken_audio_seconds_total{source="nursery"}'] > 1.0
    assert values['harken_inference_seconds_total{source="nursery"}'] > 0
    assert values['harken_source_running{source="nursery"}'] == 1
    assert values['harken_sink_failures_total{sink="live"}'] == 0
    status = httpx.get(f"{daemon.url}/api/status", headers=AUTH, timeout=5).json()
    assert status["sources"][0]["state"] == "running" and status["sources"][0]["overruns"] == 0


def test_dashboard_in_chromium(daemon: Daemon) -> None:
    require(
        importlib.util.find_spec("playwright") is not None,
        "playwright for Python (pip install playwright)",
    )
    require(Path(CHROMIUM).exists(), f"chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860}, color_scheme="dark")
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.goto(f"{daemon.url}/#token={TOKEN}")
            assert "token" not in page.url  # the fragment is cleared once stored
            expect(page.locator(".class-card")).to_have_count(3, timeout=10_000)
            expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=10_000)
            expect(page.locator("body")).to_have_attribute("data-live", "1", timeout=10_000)
            expect(page.locator("#level-value")).not_to_have_text("–")
            smoke = page.locator('.class-card[data-class="smoke_alarm"]')
            expect(smoke.locator(".score")).not_to_have_text("0.00", timeout=10_000)
            # Events: from the history and live; at least one closed one with its clip.
            rows = page.locator('.event[data-state="closed"]')
            expect(rows.first).to_be_visible(timeout=20_000)
            # Pin the row by id: newer events are added above it while the test goes on.
            row = page.locator(f'.event[data-id="{rows.first.get_attribute("data-id")}"]')
            expect(row.locator(".ev-class")).to_have_text("Smoke alarm")
            expect(row.locator(".play")).to_be_enabled(timeout=10_000)
            # The user says it was a false alarm: the row shows it, the clip is kept for retraining.
            row.locator(".fa").click()
            expect(row).to_have_class("event false-alarm", timeout=5_000)
            assert (daemon.root / "feedback" / "MANIFEST.csv").exists()
            # A class control: snooze glass_break for an hour from the page.
            glass = page.locator('.class-card[data-class="glass_break"]')
            glass.locator(".snooze-select").select_option("60")
            expect(glass.locator(".snooze-note")).to_contain_text("Snoozed until", timeout=5_000)
            controls = httpx.get(f"{daemon.url}/api/classes", headers=AUTH, timeout=5).json()
            assert next(c for c in controls if c["name"] == "glass_break")["snoozed"] is True
            # Screenshot while the alarm sounds, with some of it on the chart.
            expect(smoke).to_have_class("card class-card active", timeout=15_000)
            page.wait_for_timeout(3000)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"))
            page.set_viewport_size({"width": 390, "height": 844})
            page.wait_for_timeout(300)
            page.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
            page.locator("#theme-toggle").click()
            page.set_viewport_size({"width": 1280, "height": 860})
            page.wait_for_timeout(300)
            page.screenshot(path=str(ARTIFACTS / "dashboard-light.png"))
        finally:
            browser.close()
    assert not errors, errors
