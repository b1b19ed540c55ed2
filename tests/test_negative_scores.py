"""models.negative_scores: how sure a network is of a class on each kind of negative."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models import synth
from models.negative_scores import kind_streams, main, procedural_streams, share_at_or_above
from models.negatives import NegativePool
from tests.negatives_data import make_negatives

ROOT = Path(__file__).resolve().parents[1]


def test_share_at_or_above_counts_frames_at_each_level() -> None:
    scores = np.array([0.1, 0.5, 0.9, 0.95, 0.99, 1.0], dtype=np.float32)
    assert share_at_or_above(scores, (0.5, 0.95, 0.999)) == pytest.approx([5 / 6, 3 / 6, 1 / 6])
    with pytest.raises(ValueError, match="one class's frame scores"):
        share_at_or_above(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="one class's frame scores"):
        share_at_or_above(np.zeros(0))


def test_kind_streams_cut_each_kind_in_pool_order(tmp_path: Path) -> None:
    pool = NegativePool.load(make_negatives(tmp_path / "neg"), "train", tmp_path / "cache")
    # train holds two music chunks of 20 s and one speech chunk of 20 s
    streams = kind_streams(pool, minutes_per_kind=0.5)
    assert sorted(streams) == ["confuser_music", "confuser_speech"]
    assert streams["confuser_music"].shape == (30 * 16000,)
    assert streams["confuser_speech"].shape == (20 * 16000,)
    first = pool.chunks[0]
    expected = np.asarray(pool.audio[first.start : first.start + 16000], dtype=np.float32) / 32768.0
    assert np.array_equal(streams[first.kind][:16000], expected)
    with pytest.raises(ValueError, match="minutes-per-kind"):
        kind_streams(pool, 0)


def test_each_model_gets_a_row_per_kind_and_an_unknown_class_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    negatives = make_negatives(tmp_path / "neg")
    lite, shipped = ROOT / "models" / "harken-lite.onnx", ROOT / "models" / "harken.onnx"
    args = ["--model", str(lite), "--model", str(shipped), "--negatives", str(negatives),
            "--cache", str(tmp_path / "cache"), "--minutes-per-kind", "0.2"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("share of train negative frames with a glass_break score")
    for kind in ("confuser_music", "confuser_speech"):
        at = next(i for i, line in enumerate(lines) if line.startswith(kind))
        rows = lines[at + 1 : at + 3]
        assert [row.split()[0] for row in rows] == ["harken-lite.onnx", "harken.onnx"]
        shares = [float(x) for x in rows[0].split(None, 1)[1].split(" / ")]
        assert len(shares) == 4 and all(0.0 <= s <= 1.0 for s in shares) and shares == sorted(shares, reverse=True)
    with pytest.raises(SystemExit):
        main([*args, "--class", "doorbell"])


def test_procedural_streams_hold_each_effect_kind_over_a_faint_floor() -> None:
    streams = procedural_streams(0.1, seed=3)
    assert sorted(streams) == sorted(f"procedural_{kind}" for kind in synth.EFFECT_KINDS)
    for kind, audio in streams.items():
        assert audio.shape == (6 * 16000,) and audio.dtype == np.float32 and np.isfinite(audio).all()
        blocks = np.sqrt(np.mean(audio[: audio.shape[0] // 320 * 320].reshape(-1, 320) ** 2, axis=1))
        assert blocks.min() < 10 ** (-55 / 20), kind  # the floor shows between effects
        assert blocks.max() > 10 ** (-40 / 20), kind  # and the effects over it
    np.testing.assert_array_equal(streams["procedural_sweep"], procedural_streams(0.1, seed=3)["procedural_sweep"])
    with pytest.raises(ValueError, match="procedural-minutes"):
        procedural_streams(0)


def test_procedural_rows_follow_the_pools_kinds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    negatives = make_negatives(tmp_path / "neg")
    shipped = ROOT / "models" / "harken.onnx"
    assert main(["--model", str(shipped), "--negatives", str(negatives), "--cache", str(tmp_path / "cache"),
                 "--minutes-per-kind", "0.1", "--procedural-minutes", "0.05", "--class", "baby_cry"]) == 0
    kinds = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:] if not line.startswith(" ")]
    assert kinds == ["confuser_music", "confuser_speech", *(f"procedural_{kind}" for kind in synth.EFFECT_KINDS)]
