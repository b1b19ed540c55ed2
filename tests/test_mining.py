"""Mining (`models.mining`): joining runs for training, and one class's windows and reports,
pure logic on small files and a stand-in scorer."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from models.mining import load_mined, mine, mine_confusers
from models.negatives import SAMPLE_RATE, NegativeChunk, NegativePool
from service.decision import DecisionParams


def _write(path: Path, result: dict) -> Path:
    path.write_text(json.dumps(result))
    return path


def test_two_runs_join_with_each_window_once(tmp_path: Path) -> None:
    first = _write(tmp_path / "a.json", {"windows": [[0, 48000], [96000, 64000]],
                                         "window_classes": ["baby_cry", "glass_break"]})
    second = _write(tmp_path / "b.json", {"windows": [[96000, 64000], [320000, 48000]],
                                          "window_classes": ["glass_break", "smoke_alarm"]})
    windows, classes, reports = load_mined([first, second], [], tmp_path)
    assert windows == [(0, 48000), (96000, 64000), (320000, 48000)]
    assert classes == ["baby_cry", "glass_break", "smoke_alarm"]
    assert reports == []


def test_classes_dropped_when_a_run_lacks_them(tmp_path: Path) -> None:
    # An older mining run did not record classes: per-class weighting cannot use the join.
    old = _write(tmp_path / "old.json", {"windows": [[0, 48000]]})
    new = _write(tmp_path / "new.json", {"windows": [[48000, 48000]], "window_classes": ["baby_cry"]})
    windows, classes, _ = load_mined([old, new], [], tmp_path)
    assert windows == [(0, 48000), (48000, 48000)] and classes == []


def test_confuser_reports_summed_per_clip(tmp_path: Path) -> None:
    clips = [SimpleNamespace(path=tmp_path / "clips" / name) for name in ("tv.flac", "door.flac", "fan.flac")]
    a = _write(tmp_path / "a.json", {"windows": [], "window_classes": [], "confusers": {"clips/tv.flac": 2}})
    b = _write(tmp_path / "b.json", {"windows": [], "window_classes": [],
                                     "confusers": {"clips/tv.flac": 1, "clips/fan.flac": 4}})
    _, _, reports = load_mined([a, b], clips, tmp_path)
    assert reports == [3, 0, 4]


def test_not_a_mining_result_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "report.json"
    bad.write_text(json.dumps({"steps": 10}))
    with pytest.raises(ValueError, match=r"report\.json: not a `harken mine` result"):
        load_mined([bad], [], tmp_path)


CLASS_NAMES = ("baby_cry", "smoke_alarm", "glass_break")


def _cry_then_glass(feats: np.ndarray) -> np.ndarray:
    """A stand-in network: sure of a cry over the first quarter, of glass over the third."""
    scores = np.zeros((feats.shape[0], len(CLASS_NAMES)), dtype=np.float32)
    quarter = feats.shape[0] // 4
    scores[:quarter, 0] = 0.95
    scores[2 * quarter:3 * quarter, 2] = 0.95
    return scores


def test_mined_classes_keep_one_class_windows_and_count_every_class() -> None:
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(20 * SAMPLE_RATE) * 1000).astype(np.int16)
    pool = NegativePool(audio, [NegativeChunk("a.flac", "speech", "pkg", "GPL", 0, audio.shape[0])])
    decisions = {c: DecisionParams() for c in CLASS_NAMES}
    every = mine(_cry_then_glass, pool, decisions, CLASS_NAMES, stream_s=20.0)
    glass = mine(_cry_then_glass, pool, decisions, CLASS_NAMES, stream_s=20.0, mined_classes=["glass_break"])
    assert sorted(every["window_classes"]) == ["baby_cry", "glass_break"]
    assert glass["window_classes"] == ["glass_break"]
    assert glass["windows"] == [w for w, c in zip(every["windows"], every["window_classes"], strict=True)
                                if c == "glass_break"]
    assert glass["fa_per_hour"] == every["fa_per_hour"] and glass["fa_per_hour"]["baby_cry"] > 0


def test_mined_classes_count_one_class_reports_per_confuser_clip() -> None:
    rng = np.random.default_rng(1)
    clips = [(f"clips/{n}.flac", "cutlery", rng.standard_normal(8 * SAMPLE_RATE).astype(np.float32) * 0.03)
             for n in ("spoon", "fork")]
    decisions = {c: DecisionParams() for c in CLASS_NAMES}
    every = mine_confusers(_cry_then_glass, clips, decisions, CLASS_NAMES)
    glass = mine_confusers(_cry_then_glass, clips, decisions, CLASS_NAMES, mined_classes={"glass_break"})
    assert every["confusers"] == {"clips/spoon.flac": 2, "clips/fork.flac": 2}
    assert glass["confusers"] == {"clips/spoon.flac": 1, "clips/fork.flac": 1}
    assert glass["confuser_fa_per_hour"] == every["confuser_fa_per_hour"]
