"""`harken eval --negatives`: hours of negative audio from a built negatives folder count
for false alarms per hour, broken down by kind of audio (nothing read from ../shared)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from models import synth
from service.cli import main
from tests.conftest import require
from tests.negatives_data import make_negatives

SR = 16000


def _need_eval_extra() -> None:
    for module in ("sed_scores_eval", "matplotlib"):
        require(importlib.util.find_spec(module) is not None, f"{module} ([eval] extra)")


def _dataset(root: Path) -> Path:
    """One T3 alarm clip and one quiet-room clip, dev split."""
    rng = np.random.default_rng(5)
    root.mkdir(parents=True, exist_ok=True)
    alarm, _ = synth.alarm("t3", 2, rng)
    bed = (0.01 * synth.background(12.0, rng)).astype(np.float32)
    bed[2 * SR : 2 * SR + alarm.shape[0]] += 0.3 * alarm[: bed.shape[0] - 2 * SR]
    sf.write(str(root / "alarm.flac"), bed, SR, subtype="PCM_16")
    sf.write(str(root / "room.flac"), (0.01 * synth.background(8.0, rng)).astype(np.float32), SR, subtype="PCM_16")
    (root / "MANIFEST.csv").write_text(
        "path,class,split,source,license,group,onset,offset,quality,notes\n"
        "alarm.flac,smoke_alarm,dev,synth,CC0-1.0,a,2.0,9.0,verified,\n"
        "room.flac,background,dev,synth,CC0-1.0,b,,,verified,\n"
    )
    return root


def test_eval_counts_negative_hours_by_kind(tmp_path: Path) -> None:
    _need_eval_extra()
    data = _dataset(tmp_path / "data")
    negatives = make_negatives(tmp_path / "neg")
    out = tmp_path / "report"
    assert main(["eval", "--data", str(data), "--split", "dev", "--negatives", str(negatives),
                 "--out", str(out), "--no-progress", "--no-psds"]) == 0
    report = json.loads((out / "report.json").read_text())
    summary = report["evaluation_set"]["negatives"]
    assert summary["chunks"] == 2 and summary["hours"] == pytest.approx(40 / 3600, abs=1e-3)
    assert set(summary["hours_by_kind"]) == {"confuser_music", "confuser_speech"}
    # The manifest's negative file and both negative chunks: 8 s + 2 x 20 s without events.
    assert report["dataset"]["negative_duration_s"] == pytest.approx(48.0, abs=0.1)
    kinds = report["false_alarms_by_kind"]
    assert set(kinds) == {"background", "confuser_music", "confuser_speech"}
    assert kinds["confuser_music"]["hours"] == pytest.approx(20 / 3600, abs=1e-3)
    assert "False alarms by kind" in (out / "report.md").read_text()


def test_eval_negatives_folder_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _need_eval_extra()
    data = _dataset(tmp_path / "data")
    assert main(["eval", "--data", str(data), "--negatives", str(tmp_path / "nowhere"),
                 "--out", str(tmp_path / "r"), "--no-progress", "--no-psds"]) != 0
    err = capsys.readouterr().err
    assert "NEGATIVES.csv not found" in err and "Traceback" not in err
