"""Ground truth reading (MANIFEST.csv, DCASE TSV) and seeded scene mixing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from models import synth
from models.manifest import (
    Annotation,
    ManifestError,
    filter_rows,
    licence_is_open,
    manifest_annotations,
    read_manifest,
    read_tsv,
)
from models.scenes import SceneEvent, active_span, build_scenes, mix_scene, write_scenes

HEADER = "path,class,split,source,license,group,onset,offset,quality,notes\n"
SR = 16000


def _write(path: Path, audio: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, SR, subtype="PCM_16")


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """A small data folder: two cries, an alarm with manifest times, two negatives."""
    rng = np.random.default_rng(0)
    quiet = np.zeros(SR // 2, np.float32)
    _write(tmp_path / "cry/a.flac", np.concatenate([quiet, 0.5 * synth.cry(3.0, rng), quiet]))
    _write(tmp_path / "cry/b.flac", 0.5 * synth.cry(2.0, rng))
    alarm, _ = synth.alarm("t3", 1, rng)
    _write(tmp_path / "alarm/c.flac", 0.3 * alarm)
    _write(tmp_path / "neg/d.flac", 0.1 * synth.background(6.0, rng))
    _write(tmp_path / "neg/e.flac", 0.1 * synth.background(4.0, rng))
    (tmp_path / "MANIFEST.csv").write_text(
        HEADER
        + "cry/a.flac,baby_cry,dev,s,MIT (repo),g1,,,verified,\n"
        + "cry/b.flac,baby_cry,train,s,NO LICENSE in repo,g2,,,weak,\n"
        + "alarm/c.flac,smoke_alarm,dev,s,CC0-1.0,g3,0.0,2.5,verified,\n"
        + "neg/d.flac,background,dev,s,GPL-3,g4,,,unknown,\n"
        + '"neg/e.flac",confuser_tv,dev,s,"ESC-50 dataset CC-BY-NC-3.0; clip CC0",g5,,,verified,'
        + '"a, b"\n',
        encoding="utf-8",
    )
    return tmp_path


def test_manifest_rows_and_filters(tiny_data: Path) -> None:
    rows = read_manifest(tiny_data)
    assert [r.line for r in rows] == [2, 3, 4, 5, 6]
    assert rows[2].onset_s == 0.0 and rows[2].offset_s == 2.5
    assert rows[4].notes == "a, b" and rows[4].is_negative and not rows[4].is_target
    assert [r.path for r in read_manifest(tiny_data, split="dev")] == [
        "cry/a.flac", "alarm/c.flac", "neg/d.flac", "neg/e.flac"]
    assert [r.class_name for r in filter_rows(rows, classes=["confuser_*"])] == ["confuser_tv"]
    assert len(filter_rows(rows, classes=["negative"])) == 2
    assert [r.path for r in filter_rows(rows, open_licences_only=True)] == [
        "cry/a.flac", "alarm/c.flac", "neg/d.flac"]
    assert [r.path for r in filter_rows(rows, qualities=["weak"])] == ["cry/b.flac"]


@pytest.mark.parametrize(
    ("licence", "is_open"),
    [
        ("ODbL-1.0 (database) / DbCL-1.0 (contents)", True),
        ("freesound 119028 by joedeshon, CC-BY (repo Apache-2.0)", True),
        ("GPL-2+ (Wesnoth; see package copyright; some tracks CC-BY-SA upstream)", True),
        ("ESC-50 dataset CC-BY-NC-3.0; clip CC0 (freesound)", False),
        ("NO LICENSE in repo (author-recorded Edge Impulse clips)", False),
        ("MIT (repo LICENSE); clip provenance not stated", False),
        ("DCASE2016 Task 2 data; licence not stated - internal evaluation only", False),
    ],
)
def test_licence_is_open(licence: str, is_open: bool) -> None:
    assert licence_is_open(licence) is is_open


def test_manifest_annotations_use_given_times_else_active_span(tiny_data: Path) -> None:
    rows = read_manifest(tiny_data, split="dev")
    ann = manifest_annotations(rows)
    assert [a.file for a in ann] == ["cry/a.flac", "alarm/c.flac"]  # negatives: no events
    cry = ann[0]
    # The cry starts after 0.5 s of digital silence and stops 0.5 s before the end.
    assert cry.onset_s == pytest.approx(0.5, abs=0.05)
    assert cry.offset_s == pytest.approx(3.5, abs=0.45)  # the cry may end in a breath pause
    assert ann[1] == Annotation("alarm/c.flac", "smoke_alarm", 0.0, 2.5)
    whole = manifest_annotations(rows, span="whole")
    assert whole[0] == Annotation("cry/a.flac", "baby_cry", 0.0, 4.0)


def test_manifest_errors_name_file_and_line(tiny_data: Path) -> None:
    manifest = tiny_data / "MANIFEST.csv"
    text = manifest.read_text()
    manifest.write_text(
        text
        + "neg/x.flac,doorbell,dev,s,MIT,g,,,verified,\n"  # line 7: unknown class
        + "neg/d.flac,background,dev,s,MIT,g,1.0,2.0,verified,\n"  # line 8: events on a negative
        + "cry/a.flac,baby_cry,dev,s,MIT,g,2.0,one,verified,\n"  # line 9: not a number
        + "cry/a.flac,baby_cry,dev\n"  # line 10: too few fields
    )
    with pytest.raises(ManifestError) as err:
        read_manifest(tiny_data)
    message = str(err.value)
    assert "4 problems" in message
    for line, what in [(7, "unknown class 'doorbell'"), (8, "class 'background' has no events"),
                       (9, "onset '2.0' / offset 'one': not numbers"), (10, "3 fields")]:
        assert f"{manifest}:{line}: {what}" in message


def test_manifest_missing_audio_names_line(tiny_data: Path) -> None:
    (tiny_data / "neg/e.flac").unlink()
    with pytest.raises(ManifestError, match=r"MANIFEST.csv:6: audio file neg/e.flac does not"):
        read_manifest(tiny_data, split="dev")
    assert len(read_manifest(tiny_data, split="train")) == 1  # only checks the rows kept


def test_tsv_reads_events_and_negative_files(tiny_data: Path) -> None:
    tsv = tiny_data / "gt.tsv"
    tsv.write_text("filename\tonset\toffset\tevent_label\n"
                   "cry/a.flac\t0.5\t3.5\tbaby_cry\n"
                   "neg/d.flac\n"
                   "alarm/c.flac\t0.0\t2.5\tsmoke_alarm\n")
    truth = read_tsv(tsv)
    assert truth.files == ("cry/a.flac", "neg/d.flac", "alarm/c.flac")
    assert truth.annotations[0] == Annotation("cry/a.flac", "baby_cry", 0.5, 3.5)
    assert truth.events_of("neg/d.flac") == []


def test_tsv_errors_name_file_and_line(tiny_data: Path) -> None:
    tsv = tiny_data / "bad.tsv"
    tsv.write_text("cry/a.flac\t0.5\t3.5\tdog_bark\n"  # unknown label
                   "cry/a.flac\t3.5\t0.5\tbaby_cry\n"  # offset before onset
                   "cry/a.flac 0.5 3.5 baby_cry\n"  # spaces, not tabs: one field = a file name
                   "missing.flac\t1\t2\tbaby_cry\n"
                   "cry/a.flac\t1\tbaby_cry\n")
    with pytest.raises(ManifestError) as err:
        read_tsv(tsv)
    message = str(err.value)
    assert f"{tsv}:1: unknown label 'dog_bark'" in message
    assert f"{tsv}:2: onset '3.5' / offset '0.5'" in message
    assert f"{tsv}:3: audio file" in message and "cry/a.flac 0.5 3.5 baby_cry" in message
    assert f"{tsv}:4: audio file" in message
    assert f"{tsv}:5: 3 tab-separated fields" in message


def test_active_span_keeps_pauses_and_finds_edges() -> None:
    rng = np.random.default_rng(1)
    alarm, spans = synth.alarm("t3", 2, rng)
    audio = np.concatenate([np.zeros(SR), 0.3 * alarm]).astype(np.float32)
    audio += 1e-3 * rng.standard_normal(audio.shape[0]).astype(np.float32)
    span = active_span(audio)
    assert span is not None
    assert span.onset_s == pytest.approx(1.0 + spans[0][0], abs=0.05)
    assert span.offset_s == pytest.approx(1.0 + spans[-1][1], abs=0.05)
    assert len(span.segments) == 6  # each beep; the span bridges the gaps between them
    bridged = active_span(audio, merge_gap_s=0.6)
    assert bridged is not None and len(bridged.segments) == 2  # 0.5 s gaps bridged, 1.5 s not
    assert active_span(np.zeros(SR, np.float32)) is None


def test_mix_scene_places_events_at_the_ebr() -> None:
    rng = np.random.default_rng(2)
    bed = (0.05 * synth.background(20.0, rng)).astype(np.float32)
    tone = np.sin(2 * np.pi * 1000 * np.arange(SR) / SR).astype(np.float32)
    events = [SceneEvent("smoke_alarm", tone), SceneEvent("glass_break", 0.2 * tone)]
    audio, ann = mix_scene(bed, events, [6.0, -6.0], rng, file="s.wav", min_gap_s=2.0)
    assert [a.class_name for a in ann] == ["smoke_alarm", "glass_break"]
    for a, ebr in zip(ann, [6.0, -6.0], strict=True):
        assert a.duration_s == pytest.approx(1.0, abs=0.03) and a.file == "s.wav"
        i, j = int(a.onset_s * SR), int(a.offset_s * SR)
        added = audio[i:j] - bed[i:j]
        ratio_db = 20 * np.log10(np.sqrt(np.mean(added**2)) / np.sqrt(np.mean(bed[i:j] ** 2)))
        assert ratio_db == pytest.approx(ebr, abs=0.2)
    first, second = sorted(ann, key=lambda a: a.onset_s)
    assert second.onset_s - first.offset_s >= 2.0 - 1e-3
    with pytest.raises(ValueError, match="do not fit"):
        mix_scene(bed[: 2 * SR], events, 0.0, rng)


def test_build_scenes_is_seeded_and_writes_tsv(tiny_data: Path, tmp_path: Path) -> None:
    rows = read_manifest(tiny_data)
    one = build_scenes(rows, 4, np.random.default_rng(5), scene_s=10.0, max_events=2, min_gap_s=1.0)
    two = build_scenes(rows, 4, np.random.default_rng(5), scene_s=10.0, max_events=2, min_gap_s=1.0)
    assert [s.annotations for s in one] == [s.annotations for s in two]
    assert all(np.array_equal(a.audio, b.audio) for a, b in zip(one, two, strict=True))
    assert all(s.duration_s == 10.0 and np.abs(s.audio).max() <= 0.99 for s in one)
    events = [e for s in one for e in s.events]
    assert events and {e.ebr_db for e in events} <= {-6.0, 0.0, 6.0}
    tsv = write_scenes(one, tmp_path / "scenes")
    truth = read_tsv(tsv)
    assert truth.files == tuple(s.name for s in one)
    assert len(truth.annotations) == len(events)
    with pytest.raises(ManifestError, match="background or confuser"):
        build_scenes([r for r in rows if r.is_target], 1, np.random.default_rng(0))


def _low_share(wave: np.ndarray, below_hz: float = 400.0) -> float:
    power = np.abs(np.fft.rfft(wave)) ** 2
    freqs = np.fft.rfftfreq(wave.shape[0], 1 / synth.SAMPLE_RATE)
    return float(power[freqs < below_hz].sum() / power.sum())


@pytest.mark.parametrize("kind", synth.EFFECT_KINDS)
def test_procedural_effects_are_seeded_short_and_full_scale(kind: str) -> None:
    for seed in range(20):
        wave = synth.effect(kind, np.random.default_rng(seed))
        np.testing.assert_array_equal(wave, synth.effect(kind, np.random.default_rng(seed)))
        assert wave.dtype == np.float32 and np.isfinite(wave).all()
        assert 0.04 * synth.SAMPLE_RATE <= wave.shape[0] <= 2.0 * synth.SAMPLE_RATE
        assert np.abs(wave).max() == pytest.approx(1.0, abs=1e-3)


def test_procedural_effects_keep_their_kinds_shapes() -> None:
    """Impacts decay (their first quarter outweighs their last), engines hum low (most of
    their power under 400 Hz), sweeps and blips sit above it."""
    rng = np.random.default_rng(4)
    for _ in range(30):
        impact = synth.effect("impact", rng)
        quarter = impact.shape[0] // 4
        assert np.sum(impact[:quarter] ** 2) > 2 * np.sum(impact[-quarter:] ** 2)
        assert _low_share(synth.effect("engine", rng)) > 0.4
    assert np.median([_low_share(synth.effect("sweep", rng)) for _ in range(30)]) < 0.3
    assert np.median([_low_share(synth.effect("blips", rng)) for _ in range(30)]) < 0.3
    with pytest.raises(ValueError, match=r"unknown effect kind 'laser' \(kinds: sweep, "):
        synth.effect("laser", rng)
