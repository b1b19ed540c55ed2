"""The reference scorer (models/reference.py): YAMNet's scores on the very dev scenes
harken is tuned on, frame for frame. A stand-in replaces YAMNet (../shared is not needed);
the real model's wrapper is checked for clear errors in tests/test_teacher.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import require_module

torch = require_module("torch", "the [train] extra (torch)")

from models import reference  # noqa: E402
from models.config import load_config  # noqa: E402
from models.reference import AUDIOSET_COLUMNS, ReferenceFrames  # noqa: E402
from models.teacher import WINDOW_SAMPLES  # noqa: E402
from models.trainer import live_dev_set  # noqa: E402
from service import cli  # noqa: E402
from service.audio.features import FeatureParams, LogMel  # noqa: E402
from tests.negatives_data import make_negatives  # noqa: E402
from tests.test_live_training import LIVE_CONFIG  # noqa: E402
from tests.test_train import make_dataset  # noqa: E402


def hears_anything(window: np.ndarray) -> np.ndarray:
    """521 'class scores': 1 in the cry column when the window holds any sound, 0.3 in
    one glass column and 0.6 in the other, 0 elsewhere."""
    out = np.zeros(521, dtype=np.float32)
    out[20] = float(np.any(window != 0))
    out[435], out[437] = 0.3, 0.6
    return out


def loudness(window: np.ndarray) -> np.ndarray:
    out = np.zeros(521, dtype=np.float32)
    level = min(1.0, 20 * float(np.sqrt(np.mean(window**2))))
    for cols in AUDIOSET_COLUMNS.values():
        out[list(cols)] = level
    return out


def test_reference_rows_line_up_with_log_mel_frames_and_look_at_most_half_a_window_ahead() -> None:
    params = FeatureParams()
    frames = ReferenceFrames(hears_anything, "stand-in", params=params)
    audio = np.zeros(5 * params.sample_rate, dtype=np.float32)
    click_s = 3.0
    audio[int(click_s * params.sample_rate)] = 0.5
    rows = frames(audio)
    assert rows.shape == (LogMel(params).frames(audio).shape[0], 3)
    np.testing.assert_allclose(rows[:, 2], 0.6)  # a class takes the highest of its columns
    assert np.all(rows[:, 1] == 0)
    heard = np.flatnonzero(rows[:, 0] > 0)
    first_s, last_s = params.frame_center_s(heard[0]), params.frame_center_s(heard[-1])
    half_window_s = WINDOW_SAMPLES / 2 / params.sample_rate
    assert frames.lookahead_s == pytest.approx(half_window_s) and half_window_s <= 0.5
    # The first frame that hears the click is at most half a window before it (the
    # look-ahead), and no more than one hop later than that; the last, half a window after.
    assert click_s - half_window_s <= first_s <= click_s - half_window_s + 0.1
    assert click_s + half_window_s - 0.1 <= last_s <= click_s + half_window_s + 0.1
    # Rows are held for `hop_frames` frames: one window per 100 ms.
    assert np.all(heard[1:] - heard[:-1] == 1) and heard.shape[0] % 5 == 0
    assert frames(np.zeros(100, np.float32)).shape == (0, 3)


def test_reference_refuses_classes_without_columns() -> None:
    with pytest.raises(ValueError, match=r"no AudioSet columns.*dog"):
        ReferenceFrames(hears_anything, "stand-in", class_names=("baby_cry", "dog"))
    with pytest.raises(ValueError, match="hop_frames"):
        ReferenceFrames(hears_anything, "stand-in", hop_frames=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reference")
    model = root / "yamnet.tflite"
    model.write_bytes(b"stand-in")
    config = root / "live.yaml"
    config.write_text(LIVE_CONFIG)
    return {"root": root, "data": make_dataset(root / "data"), "negatives": make_negatives(root / "neg"),
            "model": model, "config": config}


def test_the_reference_scores_the_same_dev_scenes_as_the_networks(tiny: dict[str, Path]) -> None:
    cfg = load_config(tiny["config"])
    cache = tiny["root"] / "cache-scenes"
    logmel_dev, _ = live_dev_set(cfg, tiny["data"], tiny["negatives"], cache)
    frames = ReferenceFrames(loudness, "stand-in")
    ref_dev, _ = live_dev_set(cfg, tiny["data"], tiny["negatives"], cache, frames, frames.key)
    assert [(it.name, it.truth, it.duration_s) for it in ref_dev] == [
        (it.name, it.truth, it.duration_s) for it in logmel_dev
    ]
    for ours, theirs in zip(logmel_dev, ref_dev, strict=True):
        assert ours.features.shape[1] == 64 and theirs.features.shape == (ours.features.shape[0], 3)
    assert len(list(cache.glob("dev-*.pkl"))) == 2  # each kind of rows cached under its own key
    assert len(list(cache.glob("scenes-*.pkl"))) == 2  # and its scenes, which other draws replace
    again, _ = live_dev_set(cfg, tiny["data"], tiny["negatives"], cache, frames, frames.key)
    np.testing.assert_array_equal(again[0].features, ref_dev[0].features)


def test_harken_reference_writes_tuned_figures_and_the_shipping_score(
    tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(reference, "yamnet_scorer", lambda _path: loudness)
    out = tiny["root"] / "yamnet"
    args = ["reference", "--yamnet", str(tiny["model"]), "--config", str(tiny["config"]), "--data",
            str(tiny["data"]), "--negatives", str(tiny["negatives"]), "--cache", str(tiny["root"] / "cache"),
            "--out", str(out)]
    assert cli.main(args) == 0
    report = json.loads(out.with_suffix(".dev.json").read_text())
    assert set(report["tuned_decisions"]) == {"baby_cry", "smoke_alarm", "glass_break"}
    assert report["procedural_alarms"]["scenes"] == 36
    assert report["dev_tuned"]["negative_hours"] > 0
    assert "score" in report["shipping"] and "alarm_floor_met" in report["shipping"]
    assert "shipping score" in capsys.readouterr().out


def test_harken_reference_errors_are_clear(tiny: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    base = ["reference", "--config", str(tiny["config"]), "--data", str(tiny["data"]), "--out",
            str(tiny["root"] / "x")]
    assert cli.main([*base, "--yamnet", str(tiny["root"] / "nope.tflite")]) != 0
    assert "nope.tflite not found" in capsys.readouterr().err
    cached = tiny["root"] / "cached.yaml"
    cached.write_text(LIVE_CONFIG.replace("live: {enabled: true,", "live: {enabled: false,"))
    assert cli.main([*base[:1], "--yamnet", str(tiny["model"]), "--config", str(cached), *base[3:]]) != 0
    assert "live recipe" in capsys.readouterr().err
    # A file that is not YAMNet fails in the model wrapper, named.
    assert cli.main([*base, "--yamnet", str(tiny["model"])]) != 0
    assert "yamnet.tflite" in capsys.readouterr().err
