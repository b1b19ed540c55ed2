"""The README's first command, as a newcomer runs it: a fresh venv, the project installed
with no extras, `harken run --source demo`, and the dashboard going live.

The test suite's own venv has every extra (websockets came with [dev] once, and hid that
the base install could not serve the dashboard's WebSocket). So this module builds a
separate venv from a copy of the working tree, exactly with the README's install
command, and runs everything the user would run from *that* venv: the daemon, `harken
doctor`, `harken eval` without the [eval] extra. Only the clients (a WebSocket client,
headless Chromium) come from the test suite's venv. The first run on a machine fills
pip's cache; later runs install from it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import require, write_tiny_alarm_dataset

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]


def readme_first_command() -> tuple[list[list[str]], list[str]]:
    """The README's command 1 split into its install steps and its run step.

    It must stay `python3 -m venv .venv && .venv/bin/pip install … && .venv/bin/harken run
    --source demo`; if it changes shape, this test has to learn the new one."""
    text = (REPO / "README.md").read_text()
    match = re.search(r"^# 1\..*\n(?P<cmd>.+)$", text, re.M)
    assert match, "README: no '# 1.' command in the first code block"
    steps = [shlex.split(part) for part in match.group("cmd").split(" && ")]
    assert len(steps) == 3, steps
    venv, install, run = steps
    assert venv == ["python3", "-m", "venv", ".venv"], venv
    assert install[:2] == [".venv/bin/pip", "install"], install
    assert not any("[" in arg for arg in install), f"command 1 installs extras: {install}"
    assert run == [".venv/bin/harken", "run", "--source", "demo"], run
    return [venv, install], run


def _copy_working_tree(dest: Path) -> Path:
    """The files a fresh clone has (tracked, plus new files not yet committed), nothing built."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, check=True, timeout=60,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        origin = REPO / name
        if origin.is_file():  # a tracked file deleted in the working tree is not copied
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, dest / name)
    return dest


def _user_env(home: Path, **extra: str) -> dict[str, str]:
    """A shell like a newcomer's: no HARKEN_* config, no PYTHONPATH into this checkout
    (conftest sets one for the suite's own subprocesses), no active venv."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HARKEN_") and k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(str(REPO)))
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / ".local" / "share"),
               PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONUNBUFFERED="1", **extra)
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class FreshInstall:
    root: Path  # the copy of the working tree; the venv is root/.venv
    home: Path
    run_step: list[str]

    def env(self, **extra: str) -> dict[str, str]:
        return _user_env(self.home, **extra)

    def harken(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.root / ".venv/bin/harken"), *args], cwd=self.root,
                              env=self.env(), capture_output=True, text=True, timeout=timeout_s)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> FreshInstall:
    require(shutil.which("python3") is not None, "python3 on PATH (the README runs it)")
    install_steps, run_step = readme_first_command()
    base = tmp_path_factory.mktemp("fresh")
    root = _copy_working_tree(base / "harken")
    home = base / "home"
    home.mkdir()
    env = _user_env(home, PIP_NO_COMPILE="1")  # skip .pyc compiling: the same files, faster
    for step in install_steps:
        done = subprocess.run(step, cwd=root, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{shlex.join(step)} failed:\n{done.stderr[-4000:]}"
    cfg = (root / ".venv" / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in cfg
    return FreshInstall(root, home, run_step)


def _installed(fresh: FreshInstall) -> set[str]:
    listed = subprocess.run([str(fresh.root / ".venv/bin/python"), "-m", "pip", "list", "--format=json"],
                            env=fresh.env(), capture_output=True, text=True, timeout=120, check=True)
    return {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}


@dataclass
class Demo:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def demo(fresh: FreshInstall) -> Iterator[Demo]:
    """The README's run step from the fresh venv. Only the port (a free one) and the store
    (under the test's home) differ from what a user gets."""
    port = _free_port()
    log_path = fresh.home / "harken.log"
    env = fresh.env(HARKEN_API__PORT=str(port), HARKEN_STORE__PATH=str(fresh.home / "harken.db"))
    with log_path.open("wb") as log:
        process = subprocess.Popen(fresh.run_step, cwd=fresh.root, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    running = Demo(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"harken exited early:\n{running.log()}"
            try:
                if httpx.get(f"{running.url}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"harken did not come up:\n{running.log()}"
            time.sleep(0.2)
        yield running
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C, as the README says
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
            code = None
    assert code == 0, f"harken did not stop cleanly on Ctrl-C (exit {code}):\n{running.log()}"


def test_the_base_install_has_no_extras(fresh: FreshInstall) -> None:
    installed = _installed(fresh)
    assert "harken" in installed
    # What only the extras bring: their absence proves the venv is the bare README install.
    for extra_only in ("torch", "pytest", "playwright", "matplotlib", "sed-scores-eval"):
        assert extra_only not in installed, extra_only


def test_demo_streams_live_scores_and_an_event_over_websocket(demo: Demo) -> None:
    from websockets.sync.client import connect

    seen: dict[str, list[dict]] = {}
    with connect(demo.url.replace("http://", "ws://") + "/api/live", open_timeout=10) as ws:
        deadline = time.monotonic() + 60  # the demo's smoke alarm starts 5 s into the loop
        while not {"hello", "live", "event"} <= set(seen) and time.monotonic() < deadline:
            try:
                message = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            except TimeoutError:
                break
            seen.setdefault(message["type"], []).append(message)
    assert {"hello", "live", "event"} <= set(seen), f"got {sorted(seen)}:\n{demo.log()}"
    assert seen["hello"][0]["sources"] == ["demo"]
    live = seen["live"][-1]
    assert live["source"] == "demo" and set(live["scores"]) == {"baby_cry", "smoke_alarm", "glass_break"}
    assert -120 <= live["level_dbfs"] <= 0
    assert seen["event"][0]["event"]["source"] == "demo"
    for warning in ("No supported WebSocket library", "Unsupported upgrade", "cannot go live"):
        assert warning not in demo.log(), demo.log()


def test_demo_dashboard_goes_live_in_chromium(demo: Demo) -> None:
    require(importlib.util.find_spec("playwright") is not None, "playwright for Python (the [dev] extra)")
    require(Path(CHROMIUM).exists(), f"chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(demo.url + "/")
            expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=20_000)
            expect(page.locator("#conn-text")).to_have_text("live")
            expect(page.locator("body")).to_have_attribute("data-live", "1", timeout=20_000)
            expect(page.locator("#level-value")).not_to_have_text("–")
            # An event row of the demo, from the history or live.
            expect(page.locator('.event[data-id] .ev-source').first).to_contain_text("demo", timeout=60_000)
        finally:
            browser.close()
    assert not errors, errors
    assert "Unsupported upgrade" not in demo.log(), demo.log()


def test_doctor_in_the_fresh_install_sees_websockets_served(fresh: FreshInstall) -> None:
    config = fresh.home / "doctor.yaml"
    config.write_text(yaml.safe_dump({"sources": [{"url": "demo"}],
                                      "store": {"path": str(fresh.home / "doctor.db")},
                                      "api": {"port": _free_port()}}))
    done = fresh.harken("doctor", "--config", str(config), "--json")
    checks = {c["name"]: c for c in json.loads(done.stdout)}
    assert checks["websocket"]["status"] == "ok", checks["websocket"]
    assert done.returncode == 0, checks


def test_eval_without_the_eval_extra_says_which_extra_in_one_line(fresh: FreshInstall) -> None:
    data = write_tiny_alarm_dataset(fresh.home / "data")
    done = fresh.harken("eval", "--data", str(data), "--split", "dev", "--out", str(fresh.home / "eval"))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("harken eval: needs the [eval] extra")
    assert "pip install 'harken[eval]'" in lines[0] and "matplotlib" in lines[0]
    assert not (fresh.home / "eval").exists()  # refused before any work
