"""Hostile audio through `harken detect` (a real subprocess) and through the daemon's `file:`
sources: one clear line per bad file naming it, never a traceback, memory bounded.

Memory is measured as the peak RSS of the `harken detect` process itself (its VmHWM, which
the process writes as it exits). Not os.wait4's rusage: Linux carries a forked child's
high-water mark across exec, so the child of a large pytest process reads as large as its
parent (a `/bin/true` forked from a 1.6 GB process reports 1.6 GB). The bound is a safety
bound against reading a whole file at once or "upsampling" a broken header into days of
audio, not a performance figure.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from service.config import Settings
from service.daemon import run_daemon
from tests.conftest import REPO_ROOT, require_program, t3_scene
from tests.harken_process import Store

#: Peak resident memory allowed to `harken detect` on any hostile file (bytes).
RSS_BOUND = 1024**3


def wav_bytes(rate: int, channels: int, bits: int, data: bytes, declared: int | None = None, tag: int = 1) -> bytes:
    """A WAV file whose header says whatever the test wants it to say."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    size = len(data) if declared is None else declared
    riff = min(0xFFFFFFFF, 4 + 8 + len(fmt) + 8 + size)
    return (
        b"RIFF"
        + struct.pack("<I", riff)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", size)
        + data
    )


def hostile_files(folder: Path) -> dict[str, tuple[Path, str | None]]:
    """name -> (file, the error `detect` must report, or None when the readable part is analysed)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pcm = (rng.standard_normal(16000 * 2) * 300).astype("<i2").tobytes()
    files: dict[str, tuple[bytes, str | None]] = {
        "huge_length.wav": (wav_bytes(16000, 1, 16, pcm, declared=0xFFFFFFF0), None),
        "rate_1hz.wav": (wav_bytes(1, 1, 16, pcm), "a sample rate of 1 Hz is not plausible"),
        "channels_100.wav": (wav_bytes(16000, 100, 16, pcm), "100 channels is not a plausible recording"),
        "channels_0.wav": (wav_bytes(16000, 0, 16, pcm), "could not decode"),
        "zero_samples.wav": (wav_bytes(16000, 1, 16, b""), "contains no audio (0 samples)"),
        "unknown_codec.wav": (wav_bytes(16000, 1, 16, pcm, tag=0x1234), "could not decode"),
        "random.bin": (rng.bytes(100_000), "could not decode"),
        "text.wav": (b"not audio at all\n" * 200, "could not decode"),
        "riff_then_garbage.wav": (b"RIFF\xff\xff\xff\xffWAVEfmt " + rng.bytes(5000), "could not decode"),
    }
    out: dict[str, tuple[Path, str | None]] = {}
    for name, (data, error) in files.items():
        path = folder / name
        path.write_bytes(data)
        out[name] = (path, error)
    whole = folder / "whole.wav"
    sf.write(str(whole), (rng.standard_normal(16000 * 5) * 0.01).astype(np.float32), 16000, subtype="PCM_16")
    truncated = folder / "truncated.wav"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size * 6 // 10])  # header says 5 s
    out["truncated.wav"] = (truncated, None)
    noisy = (rng.standard_normal(16000 * 3) * 0.01).astype(np.float32)
    noisy[100:200], noisy[300:400], noisy[500] = np.nan, np.inf, -np.inf
    nan_inf = folder / "nan_inf.wav"
    sf.write(str(nan_inf), noisy, 16000, subtype="FLOAT")
    out["nan_inf.wav"] = (nan_inf, None)
    return out


#: Runs `harken detect` with sys.argv[2:] and, as it exits, writes its own peak RSS (kB,
#: VmHWM of this process's memory map only) to the file named by sys.argv[1].
PEAK_RSS_WRAPPER = """
import atexit, runpy, sys
peak_path = sys.argv.pop(1)

def write_peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            open(peak_path, "w").write(line.split()[1])

atexit.register(write_peak)
sys.argv[0] = "harken"
runpy.run_module("service.cli", run_name="__main__", alter_sys=True)
"""


def detect_measured(workdir: Path, *args: str) -> tuple[int, str, str, int]:
    """`harken detect` as a subprocess: (exit code, stdout, stderr, peak RSS in bytes of
    exactly that process, as it reported it; outputs go to files so nothing waits on a pipe)."""
    out_path, err_path, peak_path = workdir / "detect.out", workdir / "detect.err", workdir / "detect.peak"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        code = subprocess.run(
            [sys.executable, "-c", PEAK_RSS_WRAPPER, str(peak_path), "detect", *args],
            cwd=REPO_ROOT,
            stdout=out,
            stderr=err,
            check=False,
        ).returncode
    assert peak_path.is_file(), f"harken detect exited ({code}) without reporting its peak memory"
    rss_bytes = int(peak_path.read_text()) * 1024  # VmHWM is in kB
    return code, out_path.read_text(), err_path.read_text(), rss_bytes


def test_detect_names_every_hostile_file_and_goes_on(tmp_path: Path) -> None:
    require_program("ffmpeg")  # formats soundfile refuses are tried with ffmpeg
    files = hostile_files(tmp_path / "hostile")
    code, _stdout, stderr, rss = detect_measured(tmp_path, "--json", *(str(path) for path, _ in files.values()))
    assert code == 1  # some files failed, and detect says so with its exit status
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("harken detect: ")]
    for name, (path, error) in files.items():
        mine = [line for line in lines if str(path) in line]
        if error is None:
            assert not any("could not" in line or "no audio" in line for line in mine), (name, mine)
        else:
            assert len(mine) == 1 and error in mine[0], (name, mine, stderr)
    assert "nan_inf.wav: 201 NaN/inf samples replaced by silence" in stderr
    assert rss < RSS_BOUND, f"peak RSS {rss / 2**20:.0f} MiB"


def test_eight_channels_at_192_khz_with_nan_is_analysed_in_bounded_memory(tmp_path: Path) -> None:
    """61 MB of 8-channel 192 kHz float audio, a smoke alarm in it and NaN/inf sprinkled over
    it: read in bounded blocks, down-mixed and resampled; the alarm is found."""
    rng = np.random.default_rng(1)
    mono = t3_scene(10.0, alarm_at_s=2.0, seed=1)
    import soxr

    wide = soxr.resample(mono, 16000, 192000).astype(np.float32)  # (samples,)
    audio = np.repeat(wide[:, None], 8, axis=1)  # (samples, 8)
    audio += (rng.standard_normal(audio.shape) * 0.001).astype(np.float32)
    audio[rng.integers(0, len(audio), 50), rng.integers(0, 8, 50)] = np.nan
    audio[rng.integers(0, len(audio), 50), rng.integers(0, 8, 50)] = np.inf
    path = tmp_path / "wide.wav"
    sf.write(str(path), audio, 192000, subtype="FLOAT")
    assert path.stat().st_size > 60 * 10**6
    del audio, wide
    code, stdout, stderr, rss = detect_measured(tmp_path, "--json", str(path))
    assert code == 0, stderr
    assert "NaN/inf samples replaced by silence" in stderr
    classes = [line.split('"class": "')[1].split('"')[0] for line in stdout.splitlines()]
    assert "smoke_alarm" in classes, stdout
    assert rss < RSS_BOUND, f"peak RSS {rss / 2**20:.0f} MiB"


def test_hostile_file_sources_stop_with_a_clear_error_and_the_others_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    require_program("ffmpeg")
    files = hostile_files(tmp_path / "hostile")
    good = tmp_path / "good.wav"
    sf.write(str(good), t3_scene(), 16000, subtype="PCM_16")
    chosen = ["rate_1hz.wav", "channels_100.wav", "zero_samples.wav", "random.bin", "truncated.wav", "nan_inf.wav"]
    sources = [{"name": "good", "url": f"file:{good}", "realtime": False}]
    sources += [
        {"name": f"bad{i}", "url": f"file:{files[name][0]}", "realtime": False} for i, name in enumerate(chosen)
    ]
    db = tmp_path / "harken.db"
    settings = Settings.model_validate(
        {
            "sources": sources,
            "store": {"path": str(db)},
            "api": {"enabled": False},
        }
    )
    caplog.set_level(logging.INFO)
    assert asyncio.run(asyncio.wait_for(run_daemon(settings), 120)) == 0
    messages = [r.getMessage() for r in caplog.records]
    for i, name in enumerate(chosen):
        error = files[name][1]
        if error is not None:
            stopped = [m for m in messages if m.startswith(f"source bad{i} stopped: ")]
            assert len(stopped) == 1 and error in stopped[0], (name, stopped)
        else:
            assert any(m.startswith(f"source bad{i} ended after") for m in messages), name
    assert not any(r.exc_info for r in caplog.records)
    stored = [e for e in Store(db).events() if e["source"] == "good"]
    assert [e["class"] for e in stored] == ["smoke_alarm"]


def test_the_memory_measure_is_the_detect_process_not_its_parent(tmp_path: Path) -> None:
    """The bound means something only if a large test process does not leak into the
    figure: with 1.25 GiB resident here when detect starts, detect still reads as its own."""
    ballast = np.ones(160 * 2**20)  # touched: resident in this process when the child forks
    path = tmp_path / "alarm.wav"
    sf.write(str(path), t3_scene(), 16000, subtype="PCM_16")
    code, _stdout, stderr, rss = detect_measured(tmp_path, str(path))
    assert code == 0, stderr
    assert rss < ballast.nbytes / 2, f"peak RSS {rss / 2**20:.0f} MiB: the parent's memory counted"
    del ballast
