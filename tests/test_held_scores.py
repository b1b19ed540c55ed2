"""models.held_scores: two models' scores compared class by class (a held member's check)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.held_scores import main, score_differences
from tests.test_train import make_dataset

ROOT = Path(__file__).resolve().parents[1]


def test_score_differences_names_the_class_that_moved() -> None:
    a = np.random.default_rng(0).random((50, 3)).astype(np.float32)
    b = a.copy()
    b[7, 2] += 0.25
    b[3, 0] += 1e-7
    out = score_differences(a, b, ["baby_cry", "smoke_alarm", "glass_break"])
    assert out["smoke_alarm"] == (0.0, True)
    assert out["glass_break"][0] == pytest.approx(0.25, abs=1e-6) and not out["glass_break"][1]
    assert 0 < out["baby_cry"][0] < 1e-6 and not out["baby_cry"][1]
    with pytest.raises(ValueError, match="scores of shapes"):
        score_differences(a, b[:, :2], ["baby_cry", "smoke_alarm", "glass_break"])


def test_a_model_against_itself_is_identical_and_against_another_is_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_dataset(tmp_path / "data")
    lite, shipped = ROOT / "models" / "harken-lite.onnx", ROOT / "models" / "harken.onnx"
    assert main(["--model", str(lite), "--model", str(lite), "--data", str(data), "--clips", "4"]) == 0
    same = capsys.readouterr().out
    assert same.count("identical: True") == 3 and "largest difference 0 " in same
    assert main(["--model", str(lite), "--model", str(shipped), "--data", str(data), "--clips", "4"]) == 0
    assert capsys.readouterr().out.count("identical: False") == 3
    with pytest.raises(SystemExit):
        main(["--model", str(lite), "--data", str(data)])
    assert "--model twice" in capsys.readouterr().err
