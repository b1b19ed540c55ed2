"""The onset probe's pure parts: delay, opening level, summary (model card, fourteenth round)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from models.onset_probe import ClipOnset, head_level_db, main, played_alone, rise_delay, summarise


def test_rise_delay_counts_from_the_onset_not_from_earlier_frames() -> None:
    times = np.arange(100) * 0.02
    scores = np.zeros(100)
    scores[10] = 1.0  # before the onset: ignored
    scores[60:] = 0.995
    assert math.isclose(rise_delay(scores, times, onset_s=1.0, threshold=0.99), 0.2, abs_tol=1e-9)


def test_rise_delay_is_infinite_when_the_score_never_rises() -> None:
    times = np.arange(50) * 0.02
    assert rise_delay(np.full(50, 0.9), times, onset_s=0.1, threshold=0.99) == float("inf")


def test_head_level_reads_a_quiet_opening_below_a_loud_one() -> None:
    sr = 16000
    rng = np.random.default_rng(1)
    loud = rng.standard_normal(2 * sr) * 0.3
    quiet_open = np.concatenate([rng.standard_normal(sr // 2) * 0.003, loud])
    assert head_level_db(loud, 0.0, 2.0) > -3.0
    assert head_level_db(quiet_open, 0.0, 2.5) < -30.0


def test_summarise_splits_clips_by_delay_and_opening_level() -> None:
    probes = [
        ClipOnset("dev", "a", 0.0, 0.1, -5.0),
        ClipOnset("dev", "b", 0.2, 1.0, -20.0),
        ClipOnset("dev", "c", 0.5, 3.0, -12.0),
        ClipOnset("dev", "d", 0.0, float("inf"), -1.0),
    ]
    s = summarise(probes)
    assert s["clips"] == 4
    assert (s["on_time"], s["late_0.5_2s"], s["late_over_2s"], s["never"]) == (0.25, 0.25, 0.25, 0.25)
    assert s["onset_at_start"] == 0.5
    assert s["head_db_on_time"] == -5.0 and s["head_db_late"] == -16.0
    assert s["opens_quietly"] == 0.5
    assert summarise([]) == {"clips": 0}


def test_a_clip_played_with_no_lead_in_opens_the_stream() -> None:
    """--pre-s 0: the clip is the stream's first sample (as `harken eval` plays dev clips),
    with the quiet noise under it; a lead-in shifts it by its length."""
    clip = np.ones(1600, dtype=np.float32) * 0.5
    rng = np.random.default_rng(0)
    opened = played_alone(clip, rng, pre_s=0.0)
    assert opened.shape == clip.shape and abs(float(opened[0]) - 0.5) < 1e-2
    led = played_alone(clip, rng, pre_s=0.5)
    assert led.shape == (8000 + 1600,) and float(np.abs(led[:8000]).max()) < 1e-2


def test_a_negative_lead_in_is_refused_by_name(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["--model", str(tmp_path / "m.onnx"), "--data", str(tmp_path), "--pre-s", "-1"])
    assert "--pre-s must be 0 or more seconds, got -1.0" in capsys.readouterr().err
