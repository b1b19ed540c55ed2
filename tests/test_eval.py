"""`harken eval` end to end on a tiny generated data set (nothing read from ../shared)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from models import synth
from models.evaluate import LEAD_IN_DBFS, EvalItem, analyse_items, decision_params, format_table, lead_in_floor
from service.cli import main
from service.detector import Detector
from service.pipeline import analyse_file
from tests.conftest import require, write_tiny_alarm_dataset

SR = 16000
HEADER = "path,class,split,source,license,group,onset,offset,quality,notes\n"


def _need_eval_extra() -> None:
    for module in ("sed_scores_eval", "matplotlib", "tqdm"):
        require(importlib.util.find_spec(module) is not None, f"{module} ([eval] extra)")


def _clip(rng: np.random.Generator, kind: str) -> np.ndarray:
    bed = 0.01 * synth.background(5.0, rng)
    if kind == "smoke_alarm":
        event, _ = synth.alarm("t3", 1, rng)
        event = 0.3 * event
    elif kind == "baby_cry":
        event = 0.4 * synth.cry(2.5, rng)
    elif kind == "glass_break":
        event = 0.5 * synth.glass(rng)
    else:
        return (0.2 * synth.background(5.0, rng)).astype(np.float32)
    at = SR // 2
    n = min(event.shape[0], bed.shape[0] - at)
    bed[at : at + n] += event[:n]
    return bed.astype(np.float32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two clips per target class (and a mislabelled one), two background, one confuser;
    one train row."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(42)
    lines = [HEADER]
    for kind in ("smoke_alarm", "baby_cry", "glass_break", "background", "confuser_tv"):
        for i in range(1 if kind.startswith("confuser") else 2):
            rel = f"{kind}/{i}.flac"
            (root / kind).mkdir(exist_ok=True)
            sf.write(str(root / rel), _clip(rng, kind), SR, subtype="PCM_16")
            times = "0.5,3.0" if kind == "smoke_alarm" and i == 0 else ","
            lines.append(f"{rel},{kind},dev,synth,CC0-1.0,g{kind}{i},{times},verified,\n")
    # A mislabelled clip (no glass in it): a sure miss, so there is a worst case to plot.
    sf.write(str(root / "glass_break/quiet.flac"), _clip(rng, "background") * 0.05, SR)
    lines.append("glass_break/quiet.flac,glass_break,dev,synth,CC0-1.0,gq,,,weak,\n")
    lines.append("baby_cry/0.flac,baby_cry,train,synth,CC0-1.0,gx,,,verified,\n")
    (root / "MANIFEST.csv").write_text("".join(lines))
    return root


def test_eval_writes_report_markdown_and_plots(dataset: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    _need_eval_extra()
    out = tmp_path / "out"
    rc = main(["eval", "--data", str(dataset), "--split", "dev", "--out", str(out),
               "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0
    for c in ("baby_cry", "smoke_alarm", "glass_break", "overall"):
        assert c in printed
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"]["files"] == 10
    assert report["dataset"]["negative_files"] == 3
    assert report["dataset"]["negative_duration_s"] == pytest.approx(15.0, abs=0.01)
    assert report["dataset"]["events_by_class"] == {"baby_cry": 2, "smoke_alarm": 2,
                                                    "glass_break": 3}
    eb = report["event_based"]
    assert eb["overall"]["n_ref"] == 7 and eb["collar_s"] == 0.5
    missed = [e for case in report["worst_cases"] for e in case["errors"] if e["kind"] == "missed"]
    assert any(e["class"] == "glass_break" and e["onset_s"] < 0.5 for e in missed)
    # The manifest's own times win over the detected span.
    refs = {f["file"]: f["references"] for f in report["per_file"]}
    assert refs["smoke_alarm/0.flac"] == [["smoke_alarm", 0.5, 3.0]]
    assert refs["background/0.flac"] == [] and refs["confuser_tv/0.flac"] == []
    for key in ("false_alarms", "cross_trigger", "latency", "flicker", "psds",
                "event_based_onset_offset", "timing"):
        assert key in report
    assert "psds1" in report["psds"] and 0.0 <= report["psds"]["psds1"]["value"] <= 1.0
    ct = report["cross_trigger"]["matrix"]
    assert sum(ct["smoke_alarm"].values()) >= 2  # every true event lands in its row
    md = (out / "report.md").read_text()
    assert "| class |" in md and "PSDS1" in md and "Cross-triggers" in md
    pngs = [out / "cross_trigger.png", out / "fa_vs_recall.png",
            *(out / p for p in report["plots"]["timelines"])]
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert png.name in md
    assert len(report["plots"]["timelines"]) == len(report["worst_cases"]) >= 1


def test_eval_runs_the_daemons_pipeline(dataset: Path) -> None:
    """The detections evaluated are exactly what `analyse_file` (harken detect, the
    daemon's offline path) publishes for the same file and decision parameters."""
    detector = Detector.load()
    params, margin = decision_params(detector)
    path = dataset / "smoke_alarm/1.flac"
    results, failed = analyse_items([EvalItem("a", path)], detector, params, margin, False)
    assert not failed
    direct = analyse_file(path, detector, params, margin, keep_scores=True)
    assert [(d.class_name, d.onset_s, d.offset_s, d.detected_s) for d in results[0].detections] == [
        (e.class_name, e.start_s, e.end_s, e.detected_s) for e in direct.events]
    assert np.array_equal(results[0].scores, direct.scores)


def test_eval_on_seeded_scenes(dataset: Path, tmp_path: Path) -> None:
    _need_eval_extra()
    args = ["eval", "--data", str(dataset), "--scenes", "3", "--seed", "4", "--scene-s", "12",
            "--no-progress", "--no-psds", "--write-scenes"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    a = json.loads((tmp_path / "a/report.json").read_text())
    b = json.loads((tmp_path / "b/report.json").read_text())
    assert a["per_file"] == b["per_file"]  # same seed, same scenes, same decisions
    assert a["evaluation_set"]["kind"] == "scenes" and a["dataset"]["files"] == 3
    n_ref = a["event_based"]["overall"]["n_ref"]
    assert sum(v["n_ref"] for v in a["ebr_breakdown"].values()) == n_ref
    assert set(a["ebr_breakdown"]) <= {"-6", "+0", "+6"}
    # The written scenes read back as a TSV evaluation set with the same references.
    tsv = tmp_path / "a/scenes/scenes.tsv"
    assert main(["eval", "--tsv", str(tsv), "--no-progress", "--no-psds",
                 "--out", str(tmp_path / "c")]) == 0
    c = json.loads((tmp_path / "c/report.json").read_text())
    assert [f["references"] for f in c["per_file"]] == [f["references"] for f in a["per_file"]]


def test_eval_errors_name_file_and_line(dataset: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    _need_eval_extra()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "MANIFEST.csv").write_text(
        HEADER + "a.flac,baby_cry,dev,s,MIT,g,,,verified,\n"
        + "b.flac,doorbell,dev,s,MIT,g,,,verified,\n")
    assert main(["eval", "--data", str(broken), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{broken / 'MANIFEST.csv'}:3: unknown class 'doorbell'" in err
    (broken / "MANIFEST.csv").write_text(HEADER + "a.flac,baby_cry,dev,s,MIT,g,,,verified,\n")
    assert main(["eval", "--data", str(broken), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{broken / 'MANIFEST.csv'}:2: audio file a.flac does not exist" in err
    tsv = tmp_path / "truth.tsv"
    tsv.write_text("smoke_alarm/0.flac\t0.5\t3.0\tsmoke_alarm\nbaby_cry/0.flac\t0.5\t2.0\tcry\n")
    assert main(["eval", "--tsv", str(tsv), "--data", str(dataset),
                 "--out", str(tmp_path / "o")]) == 2
    assert f"{tsv}:2: unknown label 'cry'" in capsys.readouterr().err


def test_unreadable_audio_is_listed_not_lost(dataset: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    _need_eval_extra()
    data = tmp_path / "data"
    data.mkdir()
    sf.write(str(data / "good.wav"), _clip(np.random.default_rng(1), "smoke_alarm"), SR)
    (data / "bad.wav").write_bytes(b"RIFF this is not audio at all" * 10)
    tsv = data / "truth.tsv"
    tsv.write_text("good.wav\t0.5\t3.0\tsmoke_alarm\nbad.wav\n")
    out = tmp_path / "out"
    assert main(["eval", "--tsv", str(tsv), "--no-progress", "--no-psds", "--out", str(out)]) == 1
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"]["failed_files"] == 1 and report["failed"][0]["file"] == "bad.wav"
    assert report["dataset"]["files"] == 1
    assert "could not be read" in capsys.readouterr().out
    assert "could not be read" in format_table(report)


def test_eval_on_a_tiny_set_reports_psds_as_not_computable(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """One alarm file and one quiet room: two classes without events, one class with a
    single file. PSDS2 counts cross-triggers against other classes' events, of which there
    are none: a report that says so, not sed_scores_eval's TypeError."""
    _need_eval_extra()
    data = write_tiny_alarm_dataset(tmp_path / "data")
    out = tmp_path / "out"
    rc = main(["eval", "--data", str(data), "--split", "dev", "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"]["files"] == 2 and report["dataset"]["negative_files"] == 1
    assert report["dataset"]["events_by_class"] == {"baby_cry": 0, "smoke_alarm": 1, "glass_break": 0}
    psds = report["psds"]
    assert psds["classes"] == ["smoke_alarm"]
    assert psds["classes_without_events"] == ["baby_cry", "glass_break"]
    assert 0.0 <= psds["psds1"]["value"] <= 1.0
    assert "value" not in psds["psds2"]
    assert psds["psds2"]["error"].startswith("not computable") and "two classes" in psds["psds2"]["error"]
    assert "PSDS2 – (not computable" in printed
    assert "not computable" in (out / "report.md").read_text()
    assert (out / "fa_vs_recall.png").read_bytes()[:4] == b"\x89PNG"


def test_a_lead_in_plays_each_file_after_a_quiet_room(dataset: Path) -> None:
    """`--lead-in-s`: the file is scored after a seeded -65 dBFS floor, its scores and
    detections on the file's own clock: as long as without it, and the alarm found where it
    is without it (within a frame)."""
    detector = Detector.load()
    params, margin = decision_params(detector)
    path = dataset / "smoke_alarm/1.flac"
    alone, _ = analyse_items([EvalItem("a", path)], detector, params, margin, False)
    led, failed = analyse_items([EvalItem("a", path)], detector, params, margin, False, lead_in_s=3.0)
    assert not failed and led[0].duration_s == pytest.approx(alone[0].duration_s)
    assert led[0].scores.shape == alone[0].scores.shape
    alarms = [d for d in alone[0].detections if d.class_name == "smoke_alarm"]
    led_alarms = [d for d in led[0].detections if d.class_name == "smoke_alarm"]
    assert len(alarms) == len(led_alarms) >= 1
    for a, b in zip(alarms, led_alarms, strict=True):
        assert abs(a.onset_s - b.onset_s) <= 0.02 + 1e-6 and abs(a.detected_s - b.detected_s) <= 0.02 + 1e-6
    floor = lead_in_floor("a", 3.0, detector.contract.features.hop_samples)
    assert floor.shape == (48000,) and np.array_equal(floor, lead_in_floor("a", 3.0, 320))
    assert 20 * np.log10(np.sqrt(np.mean(floor.astype(np.float64) ** 2))) == pytest.approx(LEAD_IN_DBFS, abs=0.2)
    assert not np.array_equal(floor, lead_in_floor("b", 3.0, 320))


def test_eval_records_its_lead_in_and_refuses_a_negative_one(dataset: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    _need_eval_extra()
    args = ["eval", "--data", str(dataset), "--no-progress", "--no-psds", "--worst", "0"]
    assert main([*args, "--lead-in-s", "2", "--out", str(tmp_path / "a")]) == 0
    report = json.loads((tmp_path / "a/report.json").read_text())
    assert report["lead_in"] == {"seconds": 2.0, "floor_dbfs": LEAD_IN_DBFS}
    assert "--lead-in-s 2.0" in report["command"]
    assert "each file after 2 s of a quiet room (-65 dBFS)" in format_table(report)
    assert main([*args, "--lead-in-s", "-1", "--out", str(tmp_path / "b")]) == 2
    assert "--lead-in-s must be 0 or more seconds, got -1.0" in capsys.readouterr().err
