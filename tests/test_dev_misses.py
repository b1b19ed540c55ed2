"""The dev-miss probe: event fates, bed kinds, families, and dev scenes that record their
beds without changing them (model card, fifteenth round)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models import data as D
from models.data import BedPiece, DevItem
from models.dev_misses import (
    EventFate,
    alone_items,
    bed_kind_under,
    chance_of_as_many,
    clips_by_pattern,
    event_fates,
    family_of,
    kinds_under_half,
    scene_losses,
    tally,
)
from service.decision import EventEnded


def _found(class_name: str, start_s: float, end_s: float) -> EventEnded:
    return EventEnded(class_name, start_s, end_s, end_s, 1.0, 1.0)


def _scene(name: str, truth: list[tuple[str, float, float]], bed: tuple[BedPiece, ...] = ()) -> DevItem:
    return DevItem(name, np.zeros((10, 64), np.float32), truth, 20.0, False, name.split(":")[1], bed)


def test_bed_kind_is_the_piece_covering_most_of_the_event() -> None:
    bed = (BedPiece("a.flac", "confuser_dog", 0.0, 4.2), BedPiece("b.flac", "confuser_music", 4.0, 9.0))
    assert bed_kind_under(bed, 3.0, 8.0) == "confuser_music"  # 4 s of music against 1.2 s of dog
    assert bed_kind_under(bed, 1.0, 4.1) == "confuser_dog"
    assert bed_kind_under((), 1.0, 2.0) == "none"


def test_event_fates_match_the_event_metrics_collar() -> None:
    dev = [
        _scene("baby_cry:one.flac:r0:ebr+3", [("baby_cry", 2.0, 6.0)], (BedPiece("m", "confuser_music", 0, 20),)),
        _scene("baby_cry:two.flac:r0:ebr-3", [("baby_cry", 3.0, 7.0)], (BedPiece("d", "background", 0, 20),)),
        _scene("baby_cry:three.flac:r0:ebr+9", [("baby_cry", 1.0, 4.0)]),
        DevItem("negatives:0", np.zeros((10, 64), np.float32), [], 60.0, True),
    ]
    detections = [
        [_found("baby_cry", 2.3, 6.0)],  # within 500 ms of the onset: on time
        [_found("baby_cry", 4.5, 7.0), _found("glass_break", 3.0, 3.2)],  # inside, 1.5 s late
        [_found("glass_break", 1.0, 2.0)],  # another class only: missed
        [_found("baby_cry", 10.0, 12.0)],  # a false alarm in a negative stream: not an event
    ]
    fates = event_fates(dev, detections, "baby_cry")
    assert [(f.clip, f.ebr, f.fate, f.bed_kind) for f in fates] == [
        ("one.flac", "+3", "on_time", "confuser_music"),
        ("two.flac", "-3", "late", "background"),
        ("three.flac", "+9", "missed", "none"),
    ]
    by_ebr = tally(fates, "ebr")
    assert by_ebr["+3"] == {"events": 1, "on_time": 1, "late": 0, "missed": 0}
    assert tally(fates, "bed_family")["voices and music"]["on_time"] == 1


def test_families_group_kinds_and_keep_unknown_ones_apart() -> None:
    assert family_of("confuser_dog") == family_of("confuser_rooster") == "animals"
    assert family_of("background") == "weather and room"
    assert family_of("confuser_something_new") == "something_new"


def test_clip_patterns_tell_clips_missed_at_every_level() -> None:
    def fate(clip: str, ebr: str, f: str) -> EventFate:
        return EventFate(f"glass_break:{clip}:r0:ebr{ebr}", clip, ebr, 1.0, f, "background")  # type: ignore[arg-type]

    fates = [fate("a", "-3", "on_time"), fate("a", "+3", "on_time"),
             fate("b", "-3", "missed"), fate("b", "+3", "on_time"),
             fate("c", "-3", "missed"), fate("c", "+3", "missed"),
             fate("d", "-3", "late"), fate("d", "+3", "missed")]
    assert clips_by_pattern(fates) == {
        "clips": 4, "on_time_at_every_ebr": 1, "on_time_at_some": 1, "on_time_at_none": 2,
        "missed_at_every_ebr": 1,
    }


def test_negative_bed_records_its_pieces_without_changing_the_stream() -> None:
    negatives = [np.random.default_rng(i).standard_normal(16000 * 3).astype(np.float32) for i in range(4)]
    plain = D.negative_bed(negatives, 16000 * 10, np.random.default_rng(5))
    placed: list[tuple[int, int, int, int]] = []
    recorded = D.negative_bed(negatives, 16000 * 10, np.random.default_rng(5), placed=placed)
    assert np.array_equal(plain, recorded)
    assert placed[0][1] == 0 and placed[-1][2] == 16000 * 10  # the pieces cover the stream
    assert all(0 <= pick < 4 and a < b for pick, a, b, _ in placed)
    # The first piece starts inside its clip, the others at their clip's first sample.
    assert placed[0][3] > 0 and all(first == 0 for *_, first in placed[1:])
    # Where one piece lies alone, the stream is its clip at that clip's own samples, scaled.
    pick, a, b, first = placed[1]
    alone = slice(max(a, placed[0][2]) + 1000, min(b, placed[2][1]) - 1000)
    ratio = recorded[alone] / negatives[pick][alone.start - a + first : alone.stop - a + first]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)


def test_dev_scenes_record_the_negatives_under_each_event(tmp_path: Path) -> None:
    def clip(name: str, kind: str) -> D.Clip:
        return D.Clip(tmp_path / name, kind, "dev", "test", "CC0", name, "strong")

    rng = np.random.default_rng(3)
    bank = D.ClipBank([])
    cry = (0.3 * np.sin(np.arange(16000 * 2) * 0.2)).astype(np.float32)
    bank.targets["baby_cry"].append((cry, [(0.0, 2.0)], False, clip("cry.flac", "baby_cry")))
    for i, kind in enumerate(("background", "confuser_dog")):
        bank.negatives.append((0.05 * rng.standard_normal(16000 * 4)).astype(np.float32))
        bank.negative_clips.append(clip(f"neg{i}.flac", kind))
    dev = D.build_dev(bank, seed=1, reps={"baby_cry": 1})
    scene = next(it for it in dev if not it.negative_only)
    assert scene.bed and {p.kind for p in scene.bed} <= {"background", "confuser_dog"}
    assert scene.bed[0].start_s == 0.0 and abs(scene.bed[-1].end_s - scene.duration_s) < 1e-3
    assert all(it.bed == () for it in dev if it.negative_only)


def test_clips_played_alone_carry_their_spans_after_the_quiet_lead_in(tmp_path: Path) -> None:
    bank = D.ClipBank([])
    cry = np.zeros(16000 * 20, np.float32)
    clip = D.Clip(tmp_path / "long.flac", "baby_cry", "dev", "test", "CC0", "g", "strong")
    bank.targets["baby_cry"].append((cry, [(1.0, 2.5), (14.95, 18.0)], False, clip))
    (item,) = alone_items(bank, "baby_cry", pre_s=3.0, post_s=2.0, excerpt_s=15.0)
    assert item.name == "baby_cry:long.flac:alone" and not item.negative_only
    assert item.truth == [("baby_cry", 4.0, 5.5)]  # the span cut at 15 s is under 0.1 s: dropped
    assert abs(item.duration_s - 20.0) < 1e-6
    assert item.features.shape[1] == 64
    assert alone_items(bank, "glass_break") == []


def test_scene_losses_count_what_the_backgrounds_take() -> None:
    def fate(clip: str, ebr: str, f: str) -> EventFate:
        return EventFate(f"glass_break:{clip}:r0:ebr{ebr}", clip, ebr, 1.0, f, "background")  # type: ignore[arg-type]

    alone = [fate("a", "alone", "on_time"), fate("b", "alone", "on_time"), fate("c", "alone", "missed")]
    scenes = [fate("a", "-3", "missed"), fate("a", "+3", "on_time"), fate("b", "+3", "late"),
              fate("c", "+9", "on_time")]
    assert scene_losses(scenes, alone) == {
        "clips_on_time_alone": 2, "of_clips": 3, "their_scene_events": 3, "lost_in_scenes": 2,
    }


def test_kinds_under_half_and_their_chance() -> None:
    def fate(kind: str, f: str) -> EventFate:
        return EventFate("baby_cry:x:r0:ebr+3", "x", "+3", 1.0, f, kind)  # type: ignore[arg-type]

    fates = [fate("confuser_dog", "missed")] * 20 + [fate("background", "on_time")] * 20 + [
        fate("confuser_music", "on_time"), fate("confuser_music", "missed")]
    assert kinds_under_half(fates) == ["confuser_dog"]  # 0 of 20 against 21 of 22
    assert kinds_under_half(fates, min_events=21) == []
    assert chance_of_as_many(fates, shuffles=200) < 0.05  # twenty of twenty missed is rarely chance
    even = [fate("confuser_dog", "on_time"), fate("confuser_dog", "missed")] * 3 + [
        fate("background", "on_time"), fate("background", "missed")] * 3
    assert kinds_under_half(even) == [] and chance_of_as_many(even, shuffles=50) == 1.0
