"""models.positive_scores: how sure a network is of a class's events, alone and in scenes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from models import synth
from models.data import DevItem
from models.positive_scores import EventPeak, event_peaks, main, settings_of, summarise
from service.audio.features import FeatureParams

ROOT = Path(__file__).resolve().parents[1]


def _item(name: str, n_frames: int, truth: list[tuple[str, float, float]]) -> DevItem:
    return DevItem(name, np.zeros((n_frames, 64), np.float32), truth, n_frames * 0.02, False, "clip.flac")


def test_event_peaks_read_the_opening_and_the_whole_event() -> None:
    times = np.asarray(FeatureParams().frame_center_s(np.arange(500)))
    # 0.3 until 2.5 s, 0.8 from 2.5 s, 0.99 from 4 s: an event at 2-6 s opens at 0.8 within 1 s
    scores = np.where(times < 2.5, 0.3, np.where(times < 4.0, 0.8, 0.99))
    item = _item("glass_break:clip.flac:ebr+3", 500, [("glass_break", 2.0, 6.0), ("baby_cry", 7.0, 8.0)])
    (peak,) = event_peaks(item, scores, "glass_break", opening_s=1.0)
    assert peak == EventPeak("clip.flac", "+3", 0.8, 0.99)
    (late,) = event_peaks(item, scores, "glass_break", opening_s=2.5)
    assert late.opening == 0.99
    short = _item("glass_break:clip.flac:alone", 500, [("glass_break", 2.0, 2.3)])
    (break_,) = event_peaks(short, scores, "glass_break", opening_s=1.0)
    assert (break_.opening, break_.whole) == (0.8, 0.3)  # the opening runs past a short event's end
    alone = _item("glass_break:clip.flac:alone", 500, [("glass_break", 10.5, 12.0)])
    assert event_peaks(alone, scores, "glass_break", 1.0) == []  # no frame centre inside it
    with pytest.raises(ValueError, match="one class's frame scores"):
        event_peaks(item, np.zeros((500, 3)), "glass_break", 1.0)


def test_summarise_counts_events_at_each_level_and_orders_settings() -> None:
    peaks = [EventPeak("a", "alone", 0.999, 0.999), EventPeak("b", "alone", 0.96, 0.995),
             EventPeak("c", "-3", 0.4, 0.9), EventPeak("d", "+9", 0.9, 0.9)]
    s = summarise(peaks[:2], levels=(0.95, 0.99, 0.998))
    assert s["events"] == 2 and s["opening_at_or_above"] == {"0.95": 2, "0.99": 1, "0.998": 1}
    assert s["opening_median"] == pytest.approx(0.9795) and s["whole_median"] == pytest.approx(0.997)
    assert summarise([]) == {"events": 0}
    assert settings_of(peaks) == ["alone", "-3", "+9"]


def _write(root: Path, rows: list[dict[str, str]], name: str, cls: str, audio: np.ndarray) -> None:
    path = root / cls / f"{name}.flac"
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(audio, -1, 1).astype(np.float32), 16000, subtype="PCM_16")
    rows.append({"path": f"{cls}/{name}.flac", "class": cls, "split": "dev", "source": "synth",
                 "license": "CC0-1.0", "group": name, "onset": "", "offset": "", "quality": "verified",
                 "notes": ""})


def test_each_model_gets_a_row_per_setting_and_an_unknown_class_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    rows: list[dict[str, str]] = []
    _write(tmp_path, rows, "glass0", "glass_break", 0.6 * synth.glass(rng))
    for i in range(2):
        _write(tmp_path, rows, f"bg{i}", "background", 0.1 * synth.background(8.0, rng))
    with (tmp_path / "MANIFEST.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lite, shipped = ROOT / "models" / "harken-lite.onnx", ROOT / "models" / "harken.onnx"
    args = ["--model", str(lite), "--model", str(shipped), "--data", str(tmp_path)]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("glass_break events (dev): how many reach each score in their first 1 s")
    for name in ("harken-lite.onnx", "harken.onnx"):
        at = lines.index(name)
        settings = [line.split()[0] for line in lines[at + 1 : at + 5]]
        assert settings == ["alone", "-3", "+3", "+9"]
        counts = [int(x) for x in lines[at + 1].split("opening")[1].split("median")[0].split(" / ")]
        assert len(counts) == 6 and counts == sorted(counts, reverse=True) and counts[0] <= 1
    with pytest.raises(SystemExit):
        main([*args, "--class", "doorbell"])
    with pytest.raises(SystemExit):
        main([*args, "--opening-s", "0"])
