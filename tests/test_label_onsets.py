"""The label-onset check: voiced onsets, kinds, the summary and the command (thirtieth round)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from models.label_onsets import (
    ClipOnsets,
    clip_onsets,
    main,
    onset_kind,
    split_onsets,
    summarise,
    voiced_onset_s,
)
from models.scenes import active_span
from service.audio.features import FeatureParams, LogMel

SR = 16000


def _cry_after_a_knock(knock_s: float = 0.3, cry_s: float = 1.0, length_s: float = 3.0) -> np.ndarray:
    """Quiet room noise, a 0.16 s broadband knock at `knock_s`, a harmonic 'cry' from `cry_s`."""
    rng = np.random.default_rng(3)
    audio = rng.standard_normal(int(length_s * SR)) * 0.001
    k0, k1 = int(knock_s * SR), int((knock_s + 0.16) * SR)
    audio[k0:k1] += rng.standard_normal(k1 - k0) * 0.3
    t = np.arange(int((length_s - cry_s) * SR)) / SR
    cry = sum(np.sin(2 * np.pi * 450 * h * t) / h for h in (1, 2, 3, 4))
    audio[int(cry_s * SR):] += 0.2 * cry
    return audio.astype(np.float32)


def test_a_knock_opens_the_label_but_not_the_voiced_onset() -> None:
    audio = _cry_after_a_knock()
    span = active_span(audio)
    assert span is not None and span.onset_s < 0.5  # the energy label opens on the knock
    params = FeatureParams()
    voiced = voiced_onset_s(LogMel(params).frames(audio), params)
    assert 0.9 <= voiced <= 1.1


def test_voiced_onset_of_a_clip_that_opens_with_its_sound_is_its_start() -> None:
    audio = _cry_after_a_knock(knock_s=2.5, cry_s=0.0)
    params = FeatureParams()
    assert voiced_onset_s(LogMel(params).frames(audio), params) < 0.05


def test_voiced_onset_rejects_a_hold_it_cannot_meet() -> None:
    params = FeatureParams()
    with pytest.raises(ValueError, match="need_frames"):
        voiced_onset_s(np.zeros((20, params.n_mels), np.float32), params, hold_frames=5, need_frames=6)


@pytest.mark.parametrize(("reported", "kind"), [(None, "missed"), (1.4, "on_time"), (0.6, "on_time"),
                                                (1.6, "late"), (0.4, "early")])
def test_onset_kind_uses_the_collar(reported: float | None, kind: str) -> None:
    assert onset_kind(1.0, reported) == kind


def test_summary_counts_late_clips_reported_at_their_voiced_onset() -> None:
    clips = [
        ClipOnsets("a", 0.3, 1.0, 1.1, "late"),   # label on a knock, reported at the cry
        ClipOnsets("b", 0.0, 0.02, 1.5, "late"),  # heard late
        ClipOnsets("c", 0.5, 0.6, 0.6, "on_time"),
        ClipOnsets("d", 0.2, 2.0, None, "missed"),
    ]
    table = summarise(clips)
    assert table["late"] == {"clips": 2, "median_voiced_after_label_s": 0.36, "voiced_later_than_gap": 1,
                             "voiced_later_than_0.4s": 1, "voiced_later_than_0.24s": 1,
                             "reported_on_time_for_voiced": 1}
    # The onset term's windows: the knock opens 0.7 s before the cry, c only 0.1 s.
    assert table["on_time"]["voiced_later_than_0.24s"] == 0 and table["missed"]["voiced_later_than_0.4s"] == 1
    assert table["on_time"]["voiced_later_than_gap"] == 0
    assert table["missed"]["clips"] == 1 and "early" not in table


def _report_and_data(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "data"
    (data / "baby_cry").mkdir(parents=True)
    sf.write(data / "baby_cry" / "knock.flac", _cry_after_a_knock(), SR)
    report = {"per_file": [
        {"file": "baby_cry/knock.flac", "class": "baby_cry", "references": [["baby_cry", 0.3, 3.0]],
         "detections": [["baby_cry", 1.04, 2.9, 1.6, 0.999]]},
        {"file": "negatives/x.flac", "class": "negative", "references": [], "detections": []},
    ]}
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    return path, data


def test_clip_onsets_reads_a_report_and_its_clips(tmp_path: Path) -> None:
    report, data = _report_and_data(tmp_path)
    (clip,) = clip_onsets(json.loads(report.read_text()), data)
    assert clip.kind == "late" and clip.reported_s == 1.04
    assert math.isclose(clip.voiced_s, 1.0, abs_tol=0.1)
    with pytest.raises(FileNotFoundError, match="not in the data folder"):
        clip_onsets(json.loads(report.read_text()), tmp_path / "elsewhere")


def test_command_writes_its_table_pictures_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report, data = _report_and_data(tmp_path)
    out_png, out_json = tmp_path / "late.png", tmp_path / "onsets.json"
    assert main(["--report", str(report), "--data", str(data), "--plot", str(out_png),
                 "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "late {'clips': 1" in printed and "drew 1 late clips" in printed
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(out_json.read_text())[0]["kind"] == "late"


def test_command_names_a_missing_or_wrong_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--report", str(tmp_path / "none.json"), "--data", str(tmp_path)])
    assert "no such file" in capsys.readouterr().err
    wrong = tmp_path / "wrong.json"
    wrong.write_text("{}")
    with pytest.raises(SystemExit):
        main(["--report", str(wrong), "--data", str(tmp_path)])
    assert "not a harken eval report" in capsys.readouterr().err


def test_split_mode_reads_the_manifest_with_the_training_label(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    (data / "baby_cry").mkdir(parents=True)
    sf.write(data / "baby_cry" / "knock.flac", _cry_after_a_knock(), SR)
    sf.write(data / "baby_cry" / "dev.flac", _cry_after_a_knock(), SR)
    sf.write(data / "baby_cry" / "silent.flac", np.zeros(SR, dtype=np.float32), SR)
    header = "path,class,split,source,license,group,onset,offset,quality,notes\n"
    rows = [
        "baby_cry/knock.flac,baby_cry,train,s,CC0-1.0,g1,,,verified,",
        "baby_cry/silent.flac,baby_cry,train,s,CC0-1.0,g2,,,verified,",
        "baby_cry/dev.flac,baby_cry,dev,s,CC0-1.0,g3,,,verified,",
    ]
    (data / "MANIFEST.csv").write_text(header + "\n".join(rows) + "\n")
    (clip,) = split_onsets(data, "train")  # the silent clip has no label, as in training
    assert clip.file == "baby_cry/knock.flac" and clip.kind == "unscored" and clip.reported_s is None
    # The training label opens on the knock (0.3 s); the voiced cry begins at 1 s.
    assert math.isclose(clip.label_s, 0.3, abs_tol=0.05)
    assert math.isclose(clip.voiced_s, 1.0, abs_tol=0.1)
    assert main(["--split", "train", "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "unscored {'clips': 1," in out and "'voiced_later_than_0.24s': 1" in out
    with pytest.raises(SystemExit):
        main(["--split", "test", "--data", str(data)])
    assert "--split test: no baby_cry clips" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--split", "train", "--data", str(data), "--plot", str(tmp_path / "x.png")])
    assert "give --report, not --split" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--split", "train", "--report", str(tmp_path / "r.json"), "--data", str(data)])
