"""The `harken` command line, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from service.events import EventRecord


def harken(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_detect_finds_a_t3_smoke_alarm_with_a_sensible_onset(t3_wav: Path) -> None:
    result = harken("detect", str(t3_wav))
    assert result.returncode == 0, result.stderr
    assert "smoke_alarm" in result.stdout
    result = harken("detect", "--json", str(t3_wav))
    events = [json.loads(line) for line in result.stdout.splitlines()]
    alarms = [e for e in events if e["class"] == "smoke_alarm"]
    assert len(alarms) == 1, events
    alarm = alarms[0]
    assert {"file", "class", "start_s", "end_s", "detected_s", "peak_score"} <= alarm.keys()
    assert abs(alarm["start_s"] - 4.0) < 0.5  # the alarm starts at 4 s
    assert alarm["start_s"] <= alarm["detected_s"] < alarm["start_s"] + 1.0
    assert 9.5 < alarm["end_s"] < 12.0  # two T3 cycles last 6.5 s (last tone ends at 10 s)


def test_silence_gives_no_events(write_wav) -> None:
    path = write_wav(np.zeros(16000 * 5, np.float32), "silence.wav")
    result = harken("detect", "--json", str(path))
    assert result.returncode == 0 and result.stdout == ""
    assert "silence.wav: the signal is digital silence" in result.stderr
    assert harken("detect", str(path)).stdout.strip() == "no events"


def test_detect_reports_bad_files_and_goes_on(t3_wav: Path, tmp_path: Path) -> None:
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFFxxxxWAVEnonsense")
    result = harken("detect", "--json", str(tmp_path / "missing.wav"), str(bad), str(t3_wav))
    assert result.returncode == 1
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 2 and "missing.wav: no such file" in errors[0] and "broken.wav" in errors[1]
    assert any(json.loads(line)["class"] == "smoke_alarm" for line in result.stdout.splitlines())


def test_check_config_accepts_good_and_names_the_bad_key(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("sources: [{name: kitchen, url: demo}]\nclasses: {glass_break: {sensitivity: 0.3}}\n")
    result = harken("check-config", str(good))
    assert result.returncode == 0 and "OK" in result.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("classes: {glass_brake: {sensitivity: 0.3}}\n")
    result = harken("check-config", str(bad))
    assert result.returncode == 2
    assert "classes.glass_brake" in result.stderr and "Traceback" not in result.stderr


def test_every_config_problem_at_once_unknown_classes_included(tmp_path: Path) -> None:
    """Unknown class names come in the same one-line error as the other bad keys (they used to
    appear, with a stray `config ` prefix, only once everything else was fixed)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "mqtt: {port: abc}\n"
        "classes: {glass_brake: {sensitivity: 0.3}, smoke_alarm: {sensitivity: 2}}\n"
        "webhooks: [{url: 'http://127.0.0.1:9/hook', classes: [smoke_alrm], message: {default: hi}}]\n"
    )
    for command in (["check-config", str(bad)], ["run", "--config", str(bad)]):
        result = harken(*command)
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"harken {command[0]}: {bad}: ")
        for problem in (
            "mqtt.port: Input should be a valid integer",
            "classes.smoke_alarm.sensitivity: Input should be less than or equal to 1",
            "classes.glass_brake: the model has no such class (it knows baby_cry, smoke_alarm, glass_break)",
            "webhooks.0.classes: the model has no class 'smoke_alrm'",
        ):
            assert problem in line, (problem, line)
        assert "config classes" not in line and "message" not in line  # `default` is a known key
    # Alone, an unknown class is still refused, named the same way.
    bad.write_text("classes: {glass_brake: {sensitivity: 0.3}}\n")
    result = harken("run", "--config", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"harken run: {bad}: classes.glass_brake: the model has no such class "
        "(it knows baby_cry, smoke_alarm, glass_break)"
    )


def test_detect_help_explains_its_files() -> None:
    result = harken("detect", "--help")
    assert result.returncode == 0
    usage, _, rest = result.stdout.partition("positional arguments:")
    assert "FILE [FILE ...]" in usage
    described = " ".join(rest.split("options:")[0].split())
    assert described.startswith("FILE audio files: WAV, FLAC, OGG")
    assert "ffmpeg" in described and "16 kHz mono" in described


def test_run_refuses_a_model_without_contract(tmp_path: Path) -> None:
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"\x00" * 10)
    result = harken("run", "--source", "demo", env={"HARKEN_MODEL": str(fake), "PATH": "/usr/bin:/bin",
                                                    "PYTHONPATH": str(Path.cwd())})
    assert result.returncode == 2
    assert "not a loadable ONNX model" in result.stderr


def test_daemon_stores_events_from_a_file_and_stops_cleanly_on_sigterm(t3_wav: Path, tmp_path: Path) -> None:
    db = tmp_path / "harken.db"
    config = tmp_path / "harken.yaml"
    config.write_text(
        f"sources: [{{name: hall, url: 'file:{t3_wav}', realtime: false, loop: true}}]\n"
        f"store: {{path: {db}}}\napi: {{enabled: false}}\n"
    )
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    rows: list[str] = []
    while time.monotonic() < deadline:
        if db.exists():
            try:
                with sqlite3.connect(db) as conn:
                    rows = [r[0] for r in conn.execute("SELECT data FROM events WHERE end_s IS NOT NULL")]
            except sqlite3.OperationalError:
                rows = []  # the daemon is still creating the schema
            if rows:
                break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, output
    events = [EventRecord.from_dict(json.loads(r)) for r in rows]
    assert events and {e.class_name for e in events} == {"smoke_alarm"}, output
    event = events[0]
    assert event.source == "hall" and event.model_version and event.level_dbfs is not None
    assert abs(event.start_s - 4.0) < 0.5 and event.peak_score and event.peak_score > 0.5
    assert "harken stopped" in output
    assert (tmp_path / "clips" / f"{event.id}.wav").exists()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_run_from_stdin_wav_stream_stores_the_event(t3_wav: Path, tmp_path: Path) -> None:
    db = tmp_path / "harken.db"
    env = {**__import__("os").environ, "HARKEN_STORE__PATH": str(db), "HARKEN_API__ENABLED": "false"}
    result = subprocess.run([sys.executable, "-m", "service.cli", "run", "--source", "-"], input=t3_wav.read_bytes(),
                            capture_output=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    with sqlite3.connect(db) as conn:
        classes = [r[0] for r in conn.execute("SELECT class FROM events")]
    assert classes == ["smoke_alarm"]


def test_clipped_signal_is_reported_and_analysed(write_wav) -> None:
    from models import synth

    rng = np.random.default_rng(4)
    audio = synth.background(15.0, rng) * 0.02
    alarm, _ = synth.alarm("t3", 2, rng)
    audio[32000 : 32000 + alarm.size] += np.clip(alarm * 4, -1, 1)  # hard-clipped at full scale
    clipped = np.clip(audio, -1, 1)
    result = harken("detect", "--json", str(write_wav(clipped, "clipped.wav")))
    assert result.returncode == 0
    assert "clipped.wav: 11.1% of samples are clipped at full scale" in result.stderr
    assert all(json.loads(line)["class"] for line in result.stdout.splitlines())


def test_clip_holds_pre_roll_event_and_post_roll_only(t3_wav: Path, tmp_path: Path) -> None:
    import asyncio

    import soundfile as sf

    from service.config import Settings, SourceConfig
    from service.daemon import run_daemon

    db = tmp_path / "h.db"
    settings = Settings.model_validate({
        "sources": [SourceConfig(name="hall", url=f"file:{t3_wav}", realtime=False).model_dump()],
        "store": {"path": str(db), "clip_pre_s": 1.0, "clip_post_s": 2.0}, "api": {"enabled": False},
    })
    asyncio.run(asyncio.wait_for(run_daemon(settings), 60))
    with sqlite3.connect(db) as conn:
        (data,) = conn.execute("SELECT data FROM events").fetchone()
    event = EventRecord.from_dict(json.loads(data))
    info = sf.info(str(tmp_path / "clips" / f"{event.id}.wav"))
    expected = 1.0 + (event.end_s - event.start_s) + 2.0
    assert abs(info.duration - expected) < 0.1, (info.duration, expected)
