"""Event-level metrics: edge cases, and agreement with sed_eval's own implementation."""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections import defaultdict

import numpy as np
import pytest

from models.manifest import Annotation
from models.metrics import (
    NONE_COLUMN,
    Detection,
    cross_trigger_matrix,
    event_metrics,
    false_alarm_rates,
    flicker_stats,
    frame_boundaries_s,
    latency_stats,
    psds_and_curves,
)
from tests.conftest import require

CLASSES = ("baby_cry", "smoke_alarm", "glass_break")


def ref(file: str, cls: str, on: float, off: float) -> Annotation:
    return Annotation(file, cls, on, off)


def det(file: str, cls: str, on: float, off: float, detected: float | None = None,
        flicker: int = 0) -> Detection:
    return Detection(file, cls, on, off, detected_s=detected, flicker=flicker)


# ----------------------------------------------------------------- edge cases


def test_collar_is_inclusive_at_500_ms() -> None:
    refs = [ref("a", "baby_cry", 1.0, 3.0), ref("b", "baby_cry", 1.0, 3.0)]
    dets = [det("a", "baby_cry", 1.5, 2.0), det("b", "baby_cry", 1.51, 2.0)]
    m = event_metrics(refs, dets, CLASSES)
    assert (m.overall.tp, m.overall.fp, m.overall.fn) == (1, 1, 1)
    assert m.overall.f1 == pytest.approx(0.5)
    assert m.overall.error_rate == pytest.approx(1.0)  # (0 S + 1 D + 1 I) / 2


def test_events_match_only_within_their_file() -> None:
    m = event_metrics([ref("a", "baby_cry", 1.0, 2.0)], [det("b", "baby_cry", 1.0, 2.0)], CLASSES)
    assert (m.overall.tp, m.overall.fp, m.overall.fn) == (0, 1, 1)


def test_wrong_class_at_the_right_time_is_a_substitution() -> None:
    m = event_metrics([ref("a", "glass_break", 1.0, 1.5)], [det("a", "smoke_alarm", 1.2, 4.0)],
                      CLASSES)
    o = m.overall
    assert (o.tp, o.subs, o.fp, o.fn) == (0, 1, 0, 0)
    assert o.error_rate == pytest.approx(1.0)
    # Per class there are no substitutions: a deletion here, an insertion there.
    assert m.class_wise["glass_break"].fn == 1 and m.class_wise["smoke_alarm"].fp == 1
    assert m.class_wise["smoke_alarm"].error_rate is None  # no smoke_alarm references
    assert m.substitutions[0][0].class_name == "glass_break"


def test_matching_is_optimal_not_greedy() -> None:
    # Greedy (first reference takes the first detection in reach) would find one hit.
    refs = [ref("a", "baby_cry", 1.0, 2.0), ref("a", "baby_cry", 1.9, 3.0)]
    dets = [det("a", "baby_cry", 1.45, 2.0), det("a", "baby_cry", 0.6, 1.0)]
    assert event_metrics(refs, dets, CLASSES).overall.tp == 2


def test_double_report_of_one_event_is_an_insertion() -> None:
    refs = [ref("a", "baby_cry", 1.0, 6.0)]
    dets = [det("a", "baby_cry", 1.1, 2.0), det("a", "baby_cry", 1.3, 6.0)]
    m = event_metrics(refs, dets, CLASSES)
    assert (m.overall.tp, m.overall.fp) == (1, 1)
    assert m.overall.precision == pytest.approx(0.5)


def test_empty_inputs_give_none_not_nan() -> None:
    m = event_metrics([], [], CLASSES)
    assert m.overall.precision is None and m.overall.recall is None and m.overall.f1 is None
    assert m.overall.error_rate is None and m.macro()["f1"] is None
    only_refs = event_metrics([ref("a", "baby_cry", 0.0, 1.0)], [], CLASSES)
    assert only_refs.overall.recall == 0.0 and only_refs.overall.precision is None
    assert only_refs.overall.error_rate == 1.0


def test_offset_matching_is_optional() -> None:
    refs = [ref("a", "smoke_alarm", 1.0, 9.0)]
    dets = [det("a", "smoke_alarm", 1.2, 3.0)]
    assert event_metrics(refs, dets, CLASSES).overall.tp == 1
    # Offset 6 s early: outside max(0.5 s, 50 % of 8 s).
    assert event_metrics(refs, dets, CLASSES, evaluate_offset=True).overall.tp == 0
    late = [det("a", "smoke_alarm", 1.2, 12.9)]
    assert event_metrics(refs, late, CLASSES, evaluate_offset=True).overall.tp == 1


def test_unknown_classes_are_refused() -> None:
    with pytest.raises(ValueError, match="reference class 'dog'"):
        event_metrics([ref("a", "dog", 0.0, 1.0)], [], CLASSES)
    with pytest.raises(ValueError, match="detected class 'dog'"):
        event_metrics([], [det("a", "dog", 0.0, 1.0)], CLASSES)


def test_false_alarms_per_hour_count_only_negative_files() -> None:
    dets = [det("neg1", "smoke_alarm", 1, 2), det("neg1", "baby_cry", 5, 6),
            det("neg2", "baby_cry", 1, 2), det("pos", "baby_cry", 1, 2)]
    fa = false_alarm_rates(dets, {"neg1": 1800.0, "neg2": 1800.0}, CLASSES)
    assert fa["negative_duration_s"] == 3600.0 and fa["negative_files"] == 2
    assert fa["count"] == 3 and fa["per_hour"] == pytest.approx(3.0)
    assert fa["class_wise"]["baby_cry"]["per_hour"] == pytest.approx(2.0)
    assert fa["class_wise"]["glass_break"]["count"] == 0
    assert false_alarm_rates(dets, {}, CLASSES)["per_hour"] is None


def test_cross_trigger_matrix_rows_are_true_classes() -> None:
    refs = [ref("cry", "baby_cry", 0.5, 5.0), ref("glass", "glass_break", 1.0, 1.4),
            ref("quiet_cry", "baby_cry", 0.0, 3.0)]
    dets = [det("cry", "baby_cry", 0.6, 5.0), det("cry", "smoke_alarm", 2.0, 3.0),
            det("glass", "smoke_alarm", 1.1, 2.0), det("cry", "glass_break", 9.0, 9.5),
            det("tv", "baby_cry", 3.0, 4.0)]
    files = ["cry", "glass", "quiet_cry", "tv", "fridge"]
    ct = cross_trigger_matrix(refs, dets, files, CLASSES,
                              file_classes={"tv": "confuser_tv", "fridge": "background"})
    m = ct["matrix"]
    assert m["baby_cry"] == {"baby_cry": 1, "smoke_alarm": 1, "glass_break": 0, NONE_COLUMN: 1}
    assert m["glass_break"]["smoke_alarm"] == 1
    assert m["background"]["glass_break"] == 1  # the stray report in the cry file
    assert m["background"][NONE_COLUMN] == 1  # the fridge file stayed quiet
    assert m["confuser"]["baby_cry"] == 1
    assert ct["confuser_kinds"] == {"tv": {"baby_cry": 1, "smoke_alarm": 0, "glass_break": 0,
                                           NONE_COLUMN: 0}}


def test_latency_and_flicker_of_matched_events() -> None:
    refs = [ref(f"f{i}", "baby_cry", 1.0, 5.0) for i in range(10)]
    dets = [det(f"f{i}", "baby_cry", 1.0, 5.0, detected=1.0 + 0.1 * (i + 1), flicker=i % 2)
            for i in range(10)]
    dets.append(det("f0", "baby_cry", 3.0, 4.0, detected=3.5, flicker=2))  # a second fragment
    m = event_metrics(refs, dets, CLASSES)
    lat = latency_stats(m.hits, CLASSES)["class_wise"]["baby_cry"]
    assert lat["n"] == 10
    assert lat["median_s"] == pytest.approx(0.55)
    assert lat["p90_s"] == pytest.approx(np.percentile(0.1 * np.arange(1, 11), 90))
    assert latency_stats(m.hits, CLASSES)["class_wise"]["glass_break"]["median_s"] is None
    fl = flicker_stats(m.hits, dets, CLASSES)["class_wise"]["baby_cry"]
    assert fl["events"] == 10
    assert fl["changes_per_event"] == pytest.approx((5 + 2) / 10)
    assert fl["fragments_per_event"] == pytest.approx(11 / 10)


def test_frame_boundaries() -> None:
    edges = frame_boundaries_s(3, 0.02, 0.016)
    assert edges == pytest.approx([0.006, 0.026, 0.046, 0.066])


def test_psds_rewards_scores_that_follow_the_truth() -> None:
    require(importlib.util.find_spec("sed_scores_eval") is not None, "sed_scores_eval ([eval])")
    hop, first = 0.02, 0.016
    refs, good, bad, durations = [], {}, {}, {}
    rng = np.random.default_rng(0)
    for i in range(6):
        name = f"f{i}"
        n = 500  # 10 s
        t = first + hop * np.arange(n)
        cls = i % 3
        on, off = 2.0 + i * 0.3, 5.0 + i * 0.3
        refs.append(Annotation(name, CLASSES[cls], on, off))
        truth = np.zeros((n, 3))
        truth[(t >= on) & (t < off), cls] = 1.0
        good[name] = 0.8 * truth + 0.1 * rng.random((n, 3))
        bad[name] = rng.random((n, 3))
        durations[name] = 10.0
    durations["neg"] = 10.0
    good["neg"] = 0.1 * rng.random((500, 3))
    bad["neg"] = rng.random((500, 3))
    high = psds_and_curves(good, durations, refs, CLASSES, hop, first)
    low = psds_and_curves(bad, durations, refs, CLASSES, hop, first)
    assert high["psds1"]["value"] > 0.8 > 0.2 > low["psds1"]["value"]
    assert high["psds2"]["value"] > low["psds2"]["value"]
    curve = high["curves"]["class_wise"]["baby_cry"]
    assert max(curve["recall"]) == pytest.approx(1.0)
    assert len(curve["fa_per_hour"]) == len(curve["recall"]) <= 200


def test_psds_with_events_of_one_class_computes_psds1_and_explains_psds2() -> None:
    require(importlib.util.find_spec("sed_scores_eval") is not None, "sed_scores_eval ([eval])")
    hop, first, n = 0.02, 0.016, 1000  # 20 s
    t = first + hop * np.arange(n)
    scores = np.zeros((n, 3))
    scores[(t >= 5.0) & (t < 13.0), 1] = 0.9  # (frames, classes): smoke_alarm follows the truth
    refs = [Annotation("alarm", "smoke_alarm", 5.0, 13.0)]
    result = psds_and_curves({"alarm": scores, "room": np.zeros((n, 3))},
                             {"alarm": 20.0, "room": 20.0}, refs, CLASSES, hop, first)
    assert result["classes"] == ["smoke_alarm"]
    assert result["psds1"]["value"] > 0.9
    assert "value" not in result["psds2"] and "two classes" in result["psds2"]["error"]
    assert result["curves"]["class_wise"]["smoke_alarm"]["recall"]


# ----------------------------------------------------------------- agreement with sed_eval


def _sed_eval():
    require(importlib.util.find_spec("sed_eval") is not None, "sed_eval ([eval] extra)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dcase_util's pkg_resources deprecation notice
        try:
            import sed_eval
        except ModuleNotFoundError as exc:  # pkg_resources gone: setuptools>=81
            require(False, f"a working sed_eval (needs setuptools<81): {exc}")
    return sed_eval


def _spaced(events: list, min_gap_s: float) -> list:
    """Keep events whose onset is more than `min_gap_s` after the last kept one of the
    same class in the same file: each reference then has at most one candidate detection,
    so the matching (and sed_eval's greedy substitution pass) is unambiguous."""
    kept, last = [], {}
    for e in sorted(events, key=lambda e: (e.file, e.onset_s)):
        key = (e.file, e.class_name)
        if key not in last or e.onset_s - last[key] > min_gap_s:
            kept.append(e)
            last[key] = e.onset_s
    return kept


def _fixture(seed: int, n_files: int = 40, dense: bool = False) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    refs, dets = [], []
    for f in range(n_files):
        name = f"clip_{f:03d}.wav"
        for _ in range(int(rng.integers(0, 5))):
            on = float(rng.uniform(0, 28))
            refs.append(ref(name, CLASSES[int(rng.integers(3))], round(on, 3),
                            round(on + float(rng.uniform(0.2, 6)), 3)))
        for r in list(refs[-5:]):
            if r.file != name or rng.random() < 0.2:
                continue  # missed
            cls = r.class_name if rng.random() > 0.15 else CLASSES[int(rng.integers(3))]
            on = max(0.0, r.onset_s + float(rng.normal(0, 0.4)))
            off = max(on + 0.05, r.offset_s + float(rng.normal(0, 1.5)))
            dets.append(det(name, cls, round(on, 3), round(off, 3)))
        for _ in range(int(rng.integers(0, 4 if dense else 2))):
            on = float(rng.uniform(0, 29))
            dets.append(det(name, CLASSES[int(rng.integers(3))], round(on, 3),
                            round(on + float(rng.uniform(0.1, 3)), 3)))
    if not dense:
        refs, dets = _spaced(refs, 1.05), _spaced(dets, 1.05)
    return refs, dets


def _sed_eval_results(refs: list, dets: list, evaluate_offset: bool) -> dict:
    sed_eval = _sed_eval()
    metric = sed_eval.sound_event.EventBasedMetrics(
        event_label_list=list(CLASSES), t_collar=0.5, evaluate_onset=True,
        evaluate_offset=evaluate_offset, percentage_of_length=0.5)
    by_file_r, by_file_d = defaultdict(list), defaultdict(list)
    key = lambda e: (e.onset_s, e.offset_s, e.class_name)  # noqa: E731 - our order
    for r in sorted(refs, key=key):
        by_file_r[r.file].append({"filename": r.file, "event_label": r.class_name,
                                  "onset": r.onset_s, "offset": r.offset_s})
    for d in sorted(dets, key=key):
        by_file_d[d.file].append({"filename": d.file, "event_label": d.class_name,
                                  "onset": d.onset_s, "offset": d.offset_s})
    for file in sorted(set(by_file_r) | set(by_file_d)):
        metric.evaluate(reference_event_list=by_file_r[file], estimated_event_list=by_file_d[file])
    return metric.results()


def _same(ours: float | None, theirs: float) -> bool:
    if ours is None:
        # sed_eval: NaN for 0/0, and a huge number for an error rate over 0 references.
        return theirs is None or math.isnan(theirs) or theirs > 1e6
    return theirs is not None and math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=1e-9)


@pytest.mark.parametrize("evaluate_offset", [False, True])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_agrees_with_sed_eval(seed: int, evaluate_offset: bool) -> None:
    refs, dets = _fixture(seed)
    assert len(refs) > 30 and len(dets) > 30
    ours = event_metrics(refs, dets, CLASSES, collar_s=0.5, evaluate_offset=evaluate_offset)
    theirs = _sed_eval_results(refs, dets, evaluate_offset)
    o, t = ours.overall, theirs["overall"]
    assert o.subs > 0 and o.fp > 0 and o.fn > 0  # the fixture exercises every error kind
    pairs = [
        (o.f1, t["f_measure"]["f_measure"]), (o.precision, t["f_measure"]["precision"]),
        (o.recall, t["f_measure"]["recall"]), (o.error_rate, t["error_rate"]["error_rate"]),
        (o.substitution_rate, t["error_rate"]["substitution_rate"]),
        (o.deletion_rate, t["error_rate"]["deletion_rate"]),
        (o.insertion_rate, t["error_rate"]["insertion_rate"]),
    ]
    for c in CLASSES:
        oc, tc = ours.class_wise[c], theirs["class_wise"][c]
        pairs += [(oc.f1, tc["f_measure"]["f_measure"]),
                  (oc.error_rate, tc["error_rate"]["error_rate"]),
                  (oc.precision, tc["f_measure"]["precision"]),
                  (oc.recall, tc["f_measure"]["recall"])]
    macro = ours.macro()
    pairs += [(macro["f1"], theirs["class_wise_average"]["f_measure"]["f_measure"]),
              (macro["error_rate"], theirs["class_wise_average"]["error_rate"]["error_rate"])]
    for i, (a, b) in enumerate(pairs):
        assert _same(a, b), f"figure {i}: ours {a} vs sed_eval {b}"


@pytest.mark.parametrize("seed", [11, 12])
def test_agrees_with_sed_eval_on_crowded_events(seed: int) -> None:
    """Close same-class events: the maximum matching is not unique, but its size is, so
    every figure that depends only on hits agrees."""
    refs, dets = _fixture(seed, dense=True)
    ours = event_metrics(refs, dets, CLASSES)
    theirs = _sed_eval_results(refs, dets, evaluate_offset=False)
    assert _same(ours.overall.f1, theirs["overall"]["f_measure"]["f_measure"])
    for c in CLASSES:
        assert _same(ours.class_wise[c].f1, theirs["class_wise"][c]["f_measure"]["f_measure"])
        their_er = theirs["class_wise"][c]["error_rate"]["error_rate"]
        assert _same(ours.class_wise[c].error_rate, their_er)
