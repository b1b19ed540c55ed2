"""Several sources in one process: batched inference, isolation of a failing source,
graceful shutdown of the real process, and its log formats."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from models import synth
from service import daemon
from service.audio.features import StreamingLogMel
from service.config import Settings
from service.detector import Detector, push_many
from service.inference import InferenceBatcher
from service.sinks.store import EventStore
from tests.conftest import require, require_program, t3_scene

REPO = Path(__file__).resolve().parent.parent


def _scene(event: np.ndarray, seconds: float = 5.0, at_s: float = 0.5, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    audio = (synth.background(seconds, rng) * 0.02).astype(np.float32)
    start = int(at_s * 16000)
    audio[start : start + len(event)] += 0.3 * event[: len(audio) - start]
    return audio


def _alarm(seconds: float = 5.0) -> np.ndarray:
    return _scene(synth.alarm("t3", 1, np.random.default_rng(3))[0], seconds)  # beeps 0.5-3.0 s


def _cry(seconds: float = 5.0) -> np.ndarray:
    return _scene(synth.cry(2.0, np.random.default_rng(11)), seconds)


def _glass(seconds: float = 5.0) -> np.ndarray:
    return _scene(synth.glass(np.random.default_rng(12)), seconds)


# ----------------------------------------------------------------- batched scoring (pure)


@pytest.mark.parametrize("mode", ["concat", "sequential"])
def test_push_many_equals_one_pass_per_stream(detector: Detector, mode: str) -> None:
    """Streams scored together in uneven chunks give each stream's own one-pass scores."""
    rng = np.random.default_rng(1)
    streams = [
        (detector.silence_frame + rng.normal(0, 2, (n, 64))).astype(np.float32)
        for n in (300, 211, 40)
    ]
    expected = [detector.scores(s) for s in streams]
    chunkings = [[1, 7, 33, 3, 100, 156], [50, 50, 50, 61], [40]]
    original = detector.batch_mode
    detector.batch_mode = mode  # type: ignore[assignment]
    try:
        scorers = [detector.stream() for _ in streams]
        got: list[list[np.ndarray]] = [[] for _ in streams]
        offsets = [0] * len(streams)
        for step in range(max(len(c) for c in chunkings)):
            items, owners = [], []
            for i, chunks in enumerate(chunkings):
                if step < len(chunks):
                    items.append((scorers[i], streams[i][offsets[i] : offsets[i] + chunks[step]]))
                    offsets[i] += chunks[step]
                    owners.append(i)
            for i, scores in zip(owners, push_many(items), strict=True):
                got[i].append(scores)
        for i, scorer in enumerate(scorers):
            got[i].append(scorer.flush())
            np.testing.assert_allclose(np.concatenate(got[i]), expected[i], atol=1e-5)
    finally:
        detector.batch_mode = original


def test_bundled_model_batches_by_concatenation(detector: Detector) -> None:
    # The shipped model has a fixed batch of 1 and no padding: time concatenation is exact.
    assert detector.batch_mode == "concat"


def test_dynamic_batch_model_batches_along_batch_axis(tmp_path: Path, detector: Detector) -> None:
    require(importlib.util.find_spec("onnx") is not None, "python package onnx (the [train] extra)")
    import onnx

    model = onnx.load(str(detector.path))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    path = tmp_path / "dynamic.onnx"
    onnx.save(model, str(path))
    dynamic = Detector.load(path)
    assert dynamic.batch_mode == "batch"
    rng = np.random.default_rng(2)
    windows = [
        (dynamic.silence_frame + rng.normal(0, 2, (n, 64))).astype(np.float32)
        for n in (dynamic.contract.receptive_field_frames + 8, dynamic.contract.receptive_field_frames + 58)
    ]
    for got, window in zip(dynamic.raw_scores_many(windows), windows, strict=True):
        np.testing.assert_allclose(got, dynamic.raw_scores(window), atol=1e-5)


def test_batcher_collects_concurrent_streams_and_isolates_a_bad_block(detector: Detector) -> None:
    from concurrent.futures import ThreadPoolExecutor

    features = detector.contract.features
    rng = np.random.default_rng(3)
    blocks = [rng.normal(0, 0.1, 16000).astype(np.float32) for _ in range(3)]

    async def scenario() -> list[object]:
        with ThreadPoolExecutor(max_workers=1) as executor:
            batcher = InferenceBatcher(executor)
            fronts = [StreamingLogMel(features) for _ in range(3)]
            scorers = [detector.stream() for _ in range(3)]
            bad = np.zeros((10, 2), np.float32)  # a malformed block: 2-D audio
            jobs = [batcher.score(fronts[i], scorers[i], blocks[i]) for i in range(3)]
            jobs.append(batcher.score(StreamingLogMel(features), detector.stream(), bad))
            results = await asyncio.wait_for(asyncio.gather(*jobs, return_exceptions=True), 30)
            assert batcher.stats.largest_batch == 4  # all four went in one job
            return results

    results = asyncio.run(scenario())
    assert isinstance(results[3], Exception)
    for block, result in zip(blocks, results[:3], strict=True):
        assert isinstance(result, tuple)
        scores, seconds = result
        front, scorer = StreamingLogMel(features), detector.stream()
        np.testing.assert_allclose(scores, scorer.push(front.push(block)), atol=1e-5)
        assert seconds > 0


# ----------------------------------------------------------------- several sources, one process

# Streams a WAV (header with unknown length, then PCM at real time, looped) over HTTP, like a
# camera's audio endpoint; the test kills it to break one source's input.
_WAV_SERVER = r"""
import http.server, struct, sys, time
import soundfile as sf
pcm = sf.read(sys.argv[1], dtype="int16")[0].tobytes()
fmt = struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
header = b"RIFF" + b"\xff" * 4 + b"WAVEfmt " + fmt + b"data" + b"\xff" * 4
class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args): pass
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Type", "audio/wav"); self.end_headers()
        self.wfile.write(header)
        step, start, sent = 3200, time.monotonic(), 0
        while True:
            for i in range(0, len(pcm), step):
                self.wfile.write(pcm[i:i + step]); self.wfile.flush(); sent += step / 32000
                time.sleep(max(0.0, sent - (time.monotonic() - start)))
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def _events_by_source(db: Path) -> dict[str, list[tuple[str, str]]]:
    """source -> [(class, started_at)] read through a second connection (WAL allows it)."""
    with sqlite3.connect(db, timeout=5) as conn:
        rows = conn.execute("SELECT source, class, started_at FROM events ORDER BY seq").fetchall()
    found: dict[str, list[tuple[str, str]]] = {}
    for source, class_name, started_at in rows:
        found.setdefault(source, []).append((class_name, started_at))
    return found


@pytest.mark.integration
def test_three_file_sources_and_a_failing_stream_in_one_process(
    tmp_path: Path,
    write_wav: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    require_program("ffmpeg")
    expected = {"kitchen": "smoke_alarm", "nursery": "baby_cry", "hall": "glass_break"}
    files = {
        "kitchen": write_wav(_alarm(), "kitchen.wav"),
        "nursery": write_wav(_cry(), "nursery.wav"),
        "hall": write_wav(_glass(), "hall.wav"),
    }
    camera_wav = write_wav(t3_scene(6.0, 0.5, seed=5), "camera.wav")
    server = subprocess.Popen(
        [sys.executable, "-c", _WAV_SERVER, str(camera_wav)], stdout=subprocess.PIPE, text=True
    )
    db = tmp_path / "harken.db"
    captured: dict[str, daemon.Runtime] = {}
    real_build = daemon.build_runtime

    def build_and_keep(settings: Settings) -> daemon.Runtime:
        captured["runtime"] = runtime = real_build(settings)
        return runtime

    monkeypatch.setattr(daemon, "build_runtime", build_and_keep)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        settings = Settings.model_validate(
            {
                "sources": [
                    *(
                        {"name": name, "url": f"file:{path}", "realtime": True, "loop": True}
                        for name, path in files.items()
                    ),
                    {"name": "camera", "url": f"url:http://127.0.0.1:{port}/live.wav"},
                ],
                "store": {"path": str(db)},
                "api": {"enabled": False},
                # Short merge gaps so that each 5 s loop of a file is a new event.
                "classes": {
                    "smoke_alarm": {"decision": {"merge_gap_s": 1.0}},
                    "baby_cry": {"decision": {"merge_gap_s": 1.0}},
                },
            }
        )

        async def wait_for(what: str, condition: Callable[[], bool], timeout_s: float) -> None:
            deadline = time.monotonic() + timeout_s
            while not condition():
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                await asyncio.sleep(0.1)

        async def scenario() -> tuple[
            dict[str, list[tuple[str, str]]], dict[str, list[tuple[str, str]]]
        ]:
            stop = asyncio.Event()
            run = asyncio.create_task(daemon.run_daemon(settings, stop))
            try:
                await wait_for(
                    "the camera's first event",
                    lambda: "camera" in _events_by_source(db) if db.exists() else False,
                    20,
                )
                server.kill()  # the camera's stream dies mid-event
                server.wait(timeout=5)
                runners = {r.source.name: r for r in captured["runtime"].runners}
                await wait_for(
                    "the camera source to degrade",
                    lambda: runners["camera"].status.state == "degraded",
                    20,
                )
                before = _events_by_source(db)
                # Every other source keeps going: each starts a new event after the failure.
                await wait_for(
                    "new events from the healthy sources",
                    lambda: all(
                        len(_events_by_source(db).get(name, [])) > len(before.get(name, []))
                        for name in expected
                    ),
                    20,
                )
                assert all(runners[name].status.state == "running" for name in expected)
                assert captured["runtime"].batcher is not None
                assert (
                    captured["runtime"].batcher.stats.largest_batch >= 2
                )  # sources did share model calls
                return before, _events_by_source(db)
            finally:
                stop.set()
                assert await asyncio.wait_for(run, 30) == 0

        with caplog.at_level(logging.INFO):
            _before, after = asyncio.run(scenario())
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=5)
    assert set(after) == {*expected, "camera"}
    expected["camera"] = "smoke_alarm"
    for name, class_name in expected.items():
        # Each source reports its own sound, under its own name; what else the model hears
        # in these synthetic signals (a cross-trigger) is the model card's business.
        classes = [c for c, _ in after[name]]
        assert class_name in classes, f"{name}: {after[name]}"
    assert any("camera" in r.getMessage() and "retrying" in r.getMessage() for r in caplog.records)
    store = EventStore(db)
    try:
        assert store.integrity_ok()
        # Every event, the camera's interrupted one included, was closed and stored.
        assert all(record.end_s is not None for _, record in store.list_events(limit=500))
    finally:
        store.close()


# ----------------------------------------------------------------- the real process


class _Process:
    """`harken run` as a subprocess whose stderr lines are collected by a thread."""

    def __init__(self, args: list[str], env: dict[str, str], stdin: int | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", *args],
            cwd=REPO,
            env=env,
            stdin=stdin,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._queue.put(line.rstrip("\n"))

    def wait_line(self, text: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no log line with {text!r} within {timeout_s} s: {self.lines[-20:]}"
                ) from None
            self.lines.append(line)
            if text in line:
                return line

    def finish(self, timeout_s: float) -> int:
        try:
            code = self.proc.wait(timeout=timeout_s)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._reader.join(timeout=5)
        while not self._queue.empty():
            self.lines.append(self._queue.get_nowait())
        return code


def _daemon_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARKEN_")}
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "HARKEN_STORE__PATH": str(tmp_path / "harken.db"),
            "HARKEN_API__ENABLED": "false",
            **extra,
        }
    )
    return env


@pytest.mark.integration
@pytest.mark.parametrize(("sig", "json_logs"), [(signal.SIGTERM, True), (signal.SIGINT, False)])
def test_signal_closes_open_events_and_exits_cleanly(
    tmp_path: Path, write_wav: Callable[..., Path], sig: signal.Signals, json_logs: bool
) -> None:
    wav = write_wav(t3_scene(30.0, 0.5), "alarm.wav")
    config = tmp_path / "harken.yaml"
    config.write_text(f"sources:\n  - {{name: hallway, url: 'file:{wav}', realtime: true}}\n")
    env = _daemon_env(tmp_path, HARKEN_LOG__JSON="true" if json_logs else "false")
    process = _Process(["run", "--config", str(config)], env)
    process.wait_line("smoke_alarm started", 30)
    process.proc.send_signal(sig)
    assert process.finish(30) == 0
    store = EventStore(tmp_path / "harken.db")
    try:
        assert store.integrity_ok()
        events = [record for _, record in store.list_events()]
        assert [e.class_name for e in events] == ["smoke_alarm"]
        assert events[0].source == "hallway"
        assert (
            events[0].end_s is not None and events[0].ended_at is not None
        )  # closed, not dangling
    finally:
        store.close()
    if json_logs:
        entries = [json.loads(line) for line in process.lines]  # every line is one JSON object
        assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
        messages = [e["message"] for e in entries]
    else:
        assert not any(line.startswith("{") for line in process.lines)
        messages = process.lines
    assert any("smoke_alarm ended" in m for m in messages)
    assert "harken stopped" in messages[-1]


@pytest.mark.integration
def test_sigterm_with_an_idle_stdin_source_exits_promptly(tmp_path: Path) -> None:
    """A reader thread blocked on stdin must not keep the stopped daemon alive."""
    process = _Process(["run", "--source", "-"], _daemon_env(tmp_path), stdin=subprocess.PIPE)
    proc = process.proc
    try:
        assert proc.stdin is not None
        proc.stdin.write("\0" * 32000)  # one second of silence, then nothing: the pipe stays open
        proc.stdin.flush()
        process.wait_line("source default running", 30)
        time.sleep(2)  # the second of audio is consumed: the reader now blocks on the pipe
        proc.send_signal(signal.SIGTERM)
        assert process.finish(15) == 0
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
    assert "harken stopped" in process.lines[-1]


@pytest.mark.integration
@pytest.mark.parametrize("level", ["info", "warning"])
def test_log_level_from_config(tmp_path: Path, write_wav: Callable[..., Path], level: str) -> None:
    wav = write_wav(t3_scene(6.0, 0.5), "alarm.wav")
    config = tmp_path / "harken.yaml"
    config.write_text(
        f"sources: [{{name: a, url: 'file:{wav}', realtime: false}}]\nlog: {{level: {level}}}\n"
    )
    process = _Process(["run", "--config", str(config)], _daemon_env(tmp_path))
    assert process.finish(60) == 0  # the file ends, so does the daemon
    info_lines = [line for line in process.lines if " INFO " in line]
    if level == "info":
        assert any("smoke_alarm started" in line for line in info_lines), process.lines
    else:
        assert info_lines == []


def test_json_formatter_includes_exceptions(capsys: pytest.CaptureFixture[str]) -> None:
    from service.logs import setup_logging

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        setup_logging("debug", json_format=True)
        logger = logging.getLogger("harken.test")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed with %s", "detail")
        entry = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    assert entry["level"] == "error" and entry["logger"] == "harken.test"
    assert entry["message"] == "failed with detail"
    assert "ValueError: boom" in entry["exception"]
