"""Shared fixtures. Tests make their own signals; nothing here reads ../shared."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from models import synth
from service.detector import Detector

STRICT = os.environ.get("STRICT_COMPONENTS") == "1"
REPO_ROOT = Path(__file__).resolve().parent.parent
# Subprocesses (the daemon, the CLI) import this checkout even when harken is not installed.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))


def require(condition: bool, what: str) -> None:
    """Skip locally when a component is missing; fail loudly under STRICT_COMPONENTS=1 (CI)."""
    if condition:
        return
    if STRICT:
        pytest.fail(f"required component missing: {what}")
    pytest.skip(f"component missing: {what} (set STRICT_COMPONENTS=1 to fail instead)")


def require_program(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"program {name!r} (scripts/test installs it)")
    assert path is not None
    return path


@pytest.fixture(scope="session")
def detector() -> Detector:
    return Detector.load()


@pytest.fixture
def write_wav(tmp_path: Path) -> Callable[..., Path]:
    def write(audio: np.ndarray, name: str = "clip.wav", rate: int = 16000, subtype: str = "PCM_16") -> Path:
        path = tmp_path / name
        sf.write(str(path), audio, rate, subtype=subtype)
        return path

    return write


def t3_scene(seconds: float = 20.0, alarm_at_s: float = 4.0, seed: int = 3) -> np.ndarray:
    """Quiet room noise with a two-cycle T3 smoke alarm starting at `alarm_at_s`."""
    rng = np.random.default_rng(seed)
    audio = (synth.background(seconds, rng) * 0.02).astype(np.float32)
    alarm, _ = synth.alarm("t3", 2, rng)
    start = int(alarm_at_s * 16000)
    audio[start : start + len(alarm)] += 0.3 * alarm[: len(audio) - start]
    return audio


@pytest.fixture
def t3_wav(write_wav: Callable[..., Path]) -> Path:
    return write_wav(t3_scene(), "t3_alarm.wav")


async def hand_over(sink: object, store: object, message: object) -> None:
    """What the dispatcher does for one sink: store the event with the sink's outbox entries
    in one transaction, then hand the message to the sink."""
    entries = [(sink.name, p) for p in sink.outbox_entries(message)]  # type: ignore[attr-defined]
    store.save_event(message.event, entries)  # type: ignore[attr-defined]
    await sink.handle(message)  # type: ignore[attr-defined]


def require_module(name: str, what: str) -> object:
    """Import a module a whole test file needs: skip the file locally when it is missing,
    fail the collection under STRICT_COMPONENTS=1 (CI)."""
    try:
        return __import__(name)
    except ImportError:
        if STRICT:
            raise ImportError(f"required component missing: {what} (python module {name!r})") from None
        pytest.skip(f"component missing: {what}", allow_module_level=True)


MANIFEST_HEADER = "path,class,split,source,license,group,onset,offset,quality,notes\n"


def write_tiny_alarm_dataset(root: Path, alarm_onset_s: float = 5.0) -> Path:
    """The smallest MANIFEST-format data set a user might try `harken eval` on: one 20 s
    file with a procedural T3 smoke alarm from `alarm_onset_s`, one 20 s quiet room (dev)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(13)
    room = (synth.background(20.0, rng) * 0.02).astype(np.float32)
    alarm, tones = synth.alarm("t3", 2, rng)
    start = int(alarm_onset_s * 16000)
    room[start : start + len(alarm)] += 0.3 * alarm[: len(room) - start]
    offset_s = alarm_onset_s + tones[-1][1]  # the end of the last beep
    sf.write(str(root / "t3_alarm.flac"), room, 16000)
    sf.write(str(root / "quiet_room.flac"), (synth.background(20.0, rng) * 0.005).astype(np.float32), 16000)
    (root / "MANIFEST.csv").write_text(
        MANIFEST_HEADER
        + f"t3_alarm.flac,smoke_alarm,dev,synth,CC0-1.0,alarm,{alarm_onset_s},{offset_s:.3f},verified,\n"
        + "quiet_room.flac,background,dev,synth,CC0-1.0,room,,,verified,\n"
    )
    return root
