"""Joining mining runs for training (`models.mining.load_mined`): pure logic on small files."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from models.mining import load_mined


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
