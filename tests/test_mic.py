"""The microphone path through a real PortAudio device (PulseAudio pipe source)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import require_program, t3_scene
from tests.virtual_mic import VirtualMic

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def virtual_mic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VirtualMic]:
    require_program("pulseaudio")
    require_program("pactl")
    mic = VirtualMic(tmp_path_factory.mktemp("vmic"))
    mic.start()
    yield mic
    mic.stop()


def _run(args: list[str], env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_devices_lists_the_virtual_capture_device(virtual_mic: VirtualMic) -> None:
    result = _run(["devices", "--json"], virtual_mic.env)
    assert result.returncode == 0, result.stderr
    names = [d["name"] for d in json.loads(result.stdout)]
    assert "pulse" in names or "default" in names, names


def test_mic_source_delivers_the_fed_audio(virtual_mic: VirtualMic, tmp_path: Path) -> None:
    """A 1 kHz tone played into the device arrives at the mic source as 16 kHz mono audio."""
    script = tmp_path / "capture.py"
    script.write_text(
        "import asyncio, sys, numpy as np\n"
        "from service.audio.sources import AudioSource\n"
        "async def main():\n"
        "    src = AudioSource('m', 'mic'); got = []\n"
        "    async for block in src.blocks():\n"
        "        got.append(block)\n"
        "        if sum(len(b) for b in got) >= 16000 * 6: break\n"
        "    np.save(sys.argv[1], np.concatenate(got))\n"
        "asyncio.run(main())\n"
    )
    out = tmp_path / "captured.npy"
    proc = subprocess.Popen([sys.executable, str(script), str(out)], env=virtual_mic.env, cwd=Path.cwd())
    time.sleep(1.5)
    t = np.arange(16000 * 3) / 16000
    virtual_mic.play((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))
    assert proc.wait(timeout=30) == 0
    captured = np.load(out)
    assert captured.dtype == np.float32
    # Find the tone: strongest FFT bin over the loudest second must be 1 kHz, at the fed level.
    frames = captured[: len(captured) // 16000 * 16000].reshape(-1, 16000)
    loudest = frames[np.argmax(np.sqrt((frames**2).mean(axis=1)))]
    spectrum = np.abs(np.fft.rfft(loudest))
    assert abs(int(np.argmax(spectrum)) - 1000) <= 2
    assert 0.3 < np.sqrt(np.mean(loudest**2)) * np.sqrt(2) < 0.6


def test_daemon_detects_a_smoke_alarm_from_the_microphone(virtual_mic: VirtualMic, tmp_path: Path) -> None:
    db = tmp_path / "harken.db"
    env = {**virtual_mic.env, "HARKEN_STORE__PATH": str(db), "HARKEN_API__ENABLED": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "run", "--source", "mic"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("microphone" in line and "open" in line for line in lines):
            time.sleep(0.1)
        assert any("open" in line for line in lines), f"microphone never opened: {lines}"
        virtual_mic.play(t3_scene(seconds=9.0, alarm_at_s=1.0))
        deadline = time.monotonic() + 30
        classes: list[str] = []
        while time.monotonic() < deadline and "smoke_alarm" not in classes:
            time.sleep(0.5)
            if db.exists():
                try:
                    with sqlite3.connect(db) as conn:
                        classes = [row[0] for row in conn.execute("SELECT class FROM events")]
                except sqlite3.OperationalError:
                    classes = []  # the daemon is still creating the schema
        assert "smoke_alarm" in classes, f"no smoke alarm from the microphone; events: {classes}"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        reader.join(timeout=5)
    output = "".join(lines)
    assert proc.returncode == 0, output
    assert "smoke_alarm started" in output


def test_an_absent_microphone_degrades_and_retries_without_crashing(virtual_mic: VirtualMic, tmp_path: Path) -> None:
    env = {**virtual_mic.env, "HARKEN_STORE__PATH": str(tmp_path / "h.db"), "HARKEN_API__ENABLED": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "run", "--source", "mic:NoSuchMicrophone"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and sum("retrying in" in line for line in lines) < 2:
        time.sleep(0.2)
    assert proc.poll() is None, "the daemon exited instead of retrying"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)
    reader.join(timeout=5)
    output = "".join(lines)
    assert proc.returncode == 0, output
    retries = [line for line in lines if "retrying in" in line]
    assert len(retries) >= 2, output
    assert "no input device named like 'NoSuchMicrophone'" in retries[0]
    assert "retrying in 1 s" in retries[0] and "retrying in 2 s" in retries[1]  # exponential backoff
