"""Event-level detection metrics (pure functions over annotations and detections).

- Event-based precision, recall, F1 and error rate as in DCASE 2017 Task 2 / sed_eval's
  `EventBasedMetrics`: a detection matches a reference of the same class in the same file
  when their onsets differ by at most the collar (500 ms); optionally the offsets must
  also agree within max(collar, 50 % of the reference's length). Matching is a maximum
  bipartite matching per class; leftover references and detections whose onsets agree
  but whose classes differ are then paired greedily as substitutions (sed_eval's rule),
  in onset order. Overall figures are micro averages; ER = (S + D + I) / N_ref overall and
  (D + I) / N_ref per class. Undefined ratios (0/0) are None, not NaN.
- False alarms per hour on negative audio (files with no reference event).
- Cross-trigger matrix: true class -> reported class.
- Detection latency: true onset -> the moment the decision was made (`detected_s`).
- Flicker: on/off changes of the decision inside each true event, and the number of
  separate reports of it (fragments).
- PSDS and per-class false-alarms-per-hour vs recall curves from frame scores, with
  `sed_scores_eval` (imported only there).
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.manifest import Annotation

DEFAULT_COLLAR_S = 0.5
#: sed_eval's default share of the reference length allowed for the offset.
DEFAULT_OFFSET_FRACTION = 0.5
NONE_COLUMN = "(none)"
NEGATIVE_ROW = "background"


@dataclass(frozen=True)
class Detection:
    """An event the system reported (an EventEnded of the daemon's decider)."""

    file: str
    class_name: str
    onset_s: float
    offset_s: float
    detected_s: float | None = None
    peak_score: float | None = None
    flicker: int = 0


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


@dataclass(frozen=True)
class Counts:
    """Event counts of one class or of all classes (overall); rates derived from them."""

    n_ref: int
    n_sys: int
    tp: int
    fp: int
    fn: int
    subs: int = 0

    @property
    def precision(self) -> float | None:
        return _ratio(self.tp, self.n_sys)

    @property
    def recall(self) -> float | None:
        return _ratio(self.tp, self.n_ref)

    @property
    def f1(self) -> float | None:
        p, r = self.precision, self.recall
        if p is None or r is None:
            return None
        return 0.0 if p + r == 0 else 2 * p * r / (p + r)

    @property
    def substitution_rate(self) -> float | None:
        return _ratio(self.subs, self.n_ref)

    @property
    def deletion_rate(self) -> float | None:
        return _ratio(self.fn, self.n_ref)

    @property
    def insertion_rate(self) -> float | None:
        return _ratio(self.fp, self.n_ref)

    @property
    def error_rate(self) -> float | None:
        return _ratio(self.subs + self.fn + self.fp, self.n_ref)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_ref": self.n_ref, "n_sys": self.n_sys, "tp": self.tp, "fp": self.fp,
            "fn": self.fn, "subs": self.subs, "precision": self.precision, "recall": self.recall,
            "f1": self.f1, "error_rate": self.error_rate,
            "substitution_rate": self.substitution_rate, "deletion_rate": self.deletion_rate,
            "insertion_rate": self.insertion_rate,
        }


@dataclass(frozen=True)
class EventMetrics:
    """Result of `event_metrics`: counts, and which events matched how."""

    overall: Counts
    class_wise: dict[str, Counts]
    hits: tuple[tuple[Annotation, Detection], ...]
    substitutions: tuple[tuple[Annotation, Detection], ...]
    missed: tuple[Annotation, ...]
    insertions: tuple[Detection, ...]
    collar_s: float
    evaluate_offset: bool

    def macro(self) -> dict[str, float | None]:
        """Class-wise averages over classes where the figure is defined (sed_eval's
        class-wise average uses the same nanmean)."""
        out: dict[str, float | None] = {}
        for name in ("precision", "recall", "f1", "error_rate"):
            values = [getattr(c, name) for c in self.class_wise.values()]
            defined = [v for v in values if v is not None]
            out[name] = float(np.mean(defined)) if defined else None
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "collar_s": self.collar_s,
            "evaluate_offset": self.evaluate_offset,
            "overall": self.overall.to_dict(),
            "macro": self.macro(),
            "class_wise": {k: v.to_dict() for k, v in self.class_wise.items()},
        }


def _onset_ok(ref: Annotation, det: Detection, collar_s: float) -> bool:
    return abs(ref.onset_s - det.onset_s) <= collar_s


def _offset_ok(ref: Annotation, det: Detection, collar_s: float, fraction: float) -> bool:
    return abs(ref.offset_s - det.offset_s) <= max(collar_s, fraction * ref.duration_s)


def _max_matching(candidates: list[list[int]], n_right: int) -> dict[int, int]:
    """Maximum bipartite matching (augmenting paths): left index -> right index."""
    right_owner = [-1] * n_right

    def augment(left: int, seen: list[bool]) -> bool:
        for right in candidates[left]:
            if seen[right]:
                continue
            seen[right] = True
            if right_owner[right] < 0 or augment(right_owner[right], seen):
                right_owner[right] = left
                return True
        return False

    for left in range(len(candidates)):
        augment(left, [False] * n_right)
    return {left: right for right, left in enumerate(right_owner) if left >= 0}


def _sort_key(e: Annotation | Detection) -> tuple[float, float, str]:
    return (e.onset_s, e.offset_s, e.class_name)


def event_metrics(
    references: Iterable[Annotation],
    detections: Iterable[Detection],
    class_names: Sequence[str],
    collar_s: float = DEFAULT_COLLAR_S,
    evaluate_offset: bool = False,
    offset_fraction: float = DEFAULT_OFFSET_FRACTION,
) -> EventMetrics:
    """Event-based metrics over a whole evaluation set (events are matched within files).

    References or detections of classes outside `class_names` raise ValueError (they
    would otherwise be silently uncounted)."""
    known = set(class_names)
    refs_by_file: dict[str, list[Annotation]] = defaultdict(list)
    dets_by_file: dict[str, list[Detection]] = defaultdict(list)
    for r in references:
        if r.class_name not in known:
            raise ValueError(f"{r.file}: reference class {r.class_name!r} not in {sorted(known)}")
        refs_by_file[r.file].append(r)
    for d in detections:
        if d.class_name not in known:
            raise ValueError(f"{d.file}: detected class {d.class_name!r} not in {sorted(known)}")
        dets_by_file[d.file].append(d)

    def agree(ref: Annotation, det: Detection) -> bool:
        return _onset_ok(ref, det, collar_s) and (
            not evaluate_offset or _offset_ok(ref, det, collar_s, offset_fraction)
        )

    hits: list[tuple[Annotation, Detection]] = []
    subs: list[tuple[Annotation, Detection]] = []
    missed: list[Annotation] = []
    insertions: list[Detection] = []
    for file in sorted(set(refs_by_file) | set(dets_by_file)):
        refs = sorted(refs_by_file.get(file, []), key=_sort_key)
        dets = sorted(dets_by_file.get(file, []), key=_sort_key)
        ref_used = [False] * len(refs)
        det_used = [False] * len(dets)
        for cls in class_names:
            ri = [i for i, r in enumerate(refs) if r.class_name == cls]
            di = [j for j, d in enumerate(dets) if d.class_name == cls]
            candidates = [[k for k, j in enumerate(di) if agree(refs[i], dets[j])] for i in ri]
            for left, right in _max_matching(candidates, len(di)).items():
                i, j = ri[left], di[right]
                ref_used[i] = det_used[j] = True
                hits.append((refs[i], dets[j]))
        # Substitutions: a leftover reference and a leftover detection that agree in time.
        for i, ref in enumerate(refs):
            if ref_used[i]:
                continue
            for j, det in enumerate(dets):
                if not det_used[j] and agree(ref, det):
                    ref_used[i] = det_used[j] = True
                    subs.append((ref, det))
                    break
        missed += [r for i, r in enumerate(refs) if not ref_used[i]]
        insertions += [d for j, d in enumerate(dets) if not det_used[j]]

    n_ref_by = Counter(r.class_name for rs in refs_by_file.values() for r in rs)
    n_sys_by = Counter(d.class_name for ds in dets_by_file.values() for d in ds)
    tp_by = Counter(r.class_name for r, _ in hits)
    class_wise = {
        c: Counts(n_ref=n_ref_by[c], n_sys=n_sys_by[c], tp=tp_by[c],
                  fp=n_sys_by[c] - tp_by[c], fn=n_ref_by[c] - tp_by[c])
        for c in class_names
    }
    n_ref, n_sys = sum(n_ref_by.values()), sum(n_sys_by.values())
    overall = Counts(n_ref=n_ref, n_sys=n_sys, tp=len(hits), subs=len(subs),
                     fp=n_sys - len(hits) - len(subs), fn=n_ref - len(hits) - len(subs))
    return EventMetrics(overall, class_wise, tuple(hits), tuple(subs), tuple(missed),
                        tuple(insertions), collar_s, evaluate_offset)


# ----------------------------------------------------------------- false alarms


def false_alarm_rates(
    detections: Iterable[Detection],
    negative_durations_s: Mapping[str, float],
    class_names: Sequence[str],
) -> dict[str, Any]:
    """Reports per hour of negative audio (files without any reference event), per class
    and in total; the negative duration is part of the result."""
    total_s = float(sum(negative_durations_s.values()))
    hours = total_s / 3600.0
    counts = Counter(d.class_name for d in detections if d.file in negative_durations_s)
    per_class = {
        c: {"count": counts[c], "per_hour": (counts[c] / hours) if hours else None}
        for c in class_names
    }
    total = sum(counts[c] for c in class_names)
    return {
        "negative_files": len(negative_durations_s),
        "negative_duration_s": round(total_s, 3),
        "count": total,
        "per_hour": (total / hours) if hours else None,
        "class_wise": per_class,
    }


# ----------------------------------------------------------------- cross triggers


def _overlaps(ref: Annotation, det: Detection, collar_s: float) -> bool:
    return det.onset_s <= ref.offset_s + collar_s and det.offset_s >= ref.onset_s - collar_s


def cross_trigger_matrix(
    references: Iterable[Annotation],
    detections: Iterable[Detection],
    files: Iterable[str],
    class_names: Sequence[str],
    file_classes: Mapping[str, str] | None = None,
    collar_s: float = DEFAULT_COLLAR_S,
) -> dict[str, Any]:
    """Which classes each true sound made the system report.

    Rows are true classes: the target classes, then `background` and `confuser` (every
    `confuser_<kind>`) for audio without a target event. A reported event overlapping a
    true event (± collar) counts in that event's row; one overlapping none counts in the
    row of its file's negative class (`file_classes`, default `background`). Column
    `(none)` counts true events with no overlapping report, and negative files with none.
    `confuser_kinds` breaks the confuser row down by kind.
    """
    class_of = dict(file_classes or {})
    refs_by_file: dict[str, list[Annotation]] = defaultdict(list)
    for r in references:
        refs_by_file[r.file].append(r)
    dets_by_file: dict[str, list[Detection]] = defaultdict(list)
    for d in detections:
        dets_by_file[d.file].append(d)
    rows = [*class_names, NEGATIVE_ROW, "confuser"]
    cols = [*class_names, NONE_COLUMN]
    matrix = {r: dict.fromkeys(cols, 0) for r in rows}
    kinds: dict[str, dict[str, int]] = {}

    def negative_row(file: str) -> tuple[str, str | None]:
        cls = class_of.get(file, NEGATIVE_ROW)
        if cls.startswith("confuser_"):
            return "confuser", cls.removeprefix("confuser_")
        return NEGATIVE_ROW, None

    for file in files:
        refs, dets = refs_by_file.get(file, []), dets_by_file.get(file, [])
        for ref in refs:
            reported = {d.class_name for d in dets if _overlaps(ref, d, collar_s)}
            for c in reported:
                matrix[ref.class_name][c] += 1
            if not reported:
                matrix[ref.class_name][NONE_COLUMN] += 1
        stray = [d for d in dets if not any(_overlaps(r, d, collar_s) for r in refs)]
        if not refs or stray:
            row, kind = negative_row(file)
            for d in stray:
                matrix[row][d.class_name] += 1
            if not refs and not stray:
                matrix[row][NONE_COLUMN] += 1
            if kind is not None:
                per_kind = kinds.setdefault(kind, dict.fromkeys(cols, 0))
                for d in stray:
                    per_kind[d.class_name] += 1
                if not stray:
                    per_kind[NONE_COLUMN] += 1
    ordered_kinds = dict(sorted(
        kinds.items(), key=lambda kv: (-sum(kv[1][c] for c in class_names), kv[0])))
    return {"rows": rows, "columns": cols, "matrix": matrix, "confuser_kinds": ordered_kinds}


# ----------------------------------------------------------------- latency and flicker


def _percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def latency_stats(hits: Iterable[tuple[Annotation, Detection]],
                  class_names: Sequence[str]) -> dict[str, Any]:
    """Seconds from the true onset to the decision (`detected_s`), per class and overall,
    over matched events: n, median, p90, mean, max."""
    by_class: dict[str, list[float]] = defaultdict(list)
    for ref, det in hits:
        if det.detected_s is not None:
            by_class[ref.class_name].append(det.detected_s - ref.onset_s)

    def summary(values: list[float]) -> dict[str, Any]:
        return {
            "n": len(values), "median_s": _percentile(values, 50), "p90_s": _percentile(values, 90),
            "mean_s": float(np.mean(values)) if values else None,
            "max_s": float(np.max(values)) if values else None,
        }

    everything = [v for c in class_names for v in by_class[c]]
    return {"overall": summary(everything),
            "class_wise": {c: summary(by_class[c]) for c in class_names}}


def flicker_stats(
    hits: Iterable[tuple[Annotation, Detection]],
    detections: Iterable[Detection],
    class_names: Sequence[str],
) -> dict[str, Any]:
    """Per detected true event: the decision's on/off changes inside it (`EventEnded.flicker`
    summed over the same-class reports overlapping it) and the number of such reports
    (fragments; 1 is ideal). Means per class and overall."""
    by_file: dict[str, list[Detection]] = defaultdict(list)
    for d in detections:
        by_file[d.file].append(d)
    changes: dict[str, list[int]] = defaultdict(list)
    fragments: dict[str, list[int]] = defaultdict(list)
    for ref, det in hits:
        same = [d for d in by_file[ref.file]
                if d.class_name == ref.class_name and _overlaps(ref, d, 0.0)]
        same = same or [det]  # matched by onset, yet ending before the true onset
        changes[ref.class_name].append(sum(d.flicker for d in same))
        fragments[ref.class_name].append(len(same))

    def summary(c: list[int], f: list[int]) -> dict[str, Any]:
        return {"events": len(c), "changes_per_event": float(np.mean(c)) if c else None,
                "fragments_per_event": float(np.mean(f)) if f else None}

    all_c = [v for k in class_names for v in changes[k]]
    all_f = [v for k in class_names for v in fragments[k]]
    return {"overall": summary(all_c, all_f),
            "class_wise": {k: summary(changes[k], fragments[k]) for k in class_names}}


# ----------------------------------------------------------------- PSDS and curves

#: DCASE 2021-2024 scenarios: PSDS1 rewards precise timing, PSDS2 avoiding cross-triggers.
PSDS_SCENARIOS: dict[str, dict[str, Any]] = {
    "psds1": {"dtc_threshold": 0.7, "gtc_threshold": 0.7, "cttc_threshold": None,
              "alpha_ct": 0.0, "alpha_st": 1.0, "max_efpr": 100.0},
    "psds2": {"dtc_threshold": 0.1, "gtc_threshold": 0.1, "cttc_threshold": 0.3,
              "alpha_ct": 0.5, "alpha_st": 1.0, "max_efpr": 100.0},
}


def frame_boundaries_s(n_frames: int, hop_s: float, first_center_s: float) -> np.ndarray:
    """n+1 frame edges for frames centred every `hop_s` from `first_center_s`: (n+1,)."""
    edges = first_center_s - hop_s / 2 + hop_s * np.arange(n_frames + 1)
    return np.maximum(edges, 0.0)


def _downsample_curve(x: np.ndarray, y: np.ndarray, t: np.ndarray | None,
                      max_points: int = 200) -> dict[str, list[float]]:
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    t = t[keep] if t is not None and t.shape == keep.shape else None
    if x.size > max_points:
        idx = np.unique(np.linspace(0, x.size - 1, max_points).round().astype(int))
        x, y = x[idx], y[idx]
        t = t[idx] if t is not None else None
    out = {"fa_per_hour": [round(float(v), 4) for v in x],
           "recall": [round(float(v), 4) for v in y]}
    if t is not None:
        out["threshold"] = [round(float(v), 4) for v in t]
    return out


def psds_and_curves(
    scores: Mapping[str, np.ndarray],
    durations_s: Mapping[str, float],
    references: Iterable[Annotation],
    class_names: Sequence[str],
    hop_s: float,
    first_center_s: float,
    score_decimals: int = 3,
) -> dict[str, Any]:
    """PSDS1 and PSDS2 (with sed_scores_eval) from per-file frame scores (frames, classes),
    and each class's false alarms per hour vs recall curve (PSDS1's single-class ROC:
    intersection-based, DTC = GTC = 0.7). Scores are rounded to `score_decimals`, which
    bounds the number of operating points (and the time) without changing the curves
    visibly. Classes without any reference event are left out (PSDS is undefined for
    them) and listed. A scenario that cannot be computed on this data (PSDS2 with events
    of only one class) gets an `error` instead of a `value`. `scores` and `durations_s`
    must cover the same files."""
    with warnings.catch_warnings():
        # dcase_util (imported by sed_scores_eval) warns that pkg_resources is deprecated.
        warnings.simplefilter("ignore", UserWarning)
        from sed_scores_eval import intersection_based
        from sed_scores_eval.base_modules.scores import create_score_dataframe

    files = sorted(scores)
    if not files:
        return {"error": "no files"}
    truth: dict[str, list[tuple[float, float, str]]] = {f: [] for f in files}
    for r in references:
        if r.file in truth:
            truth[r.file].append((r.onset_s, r.offset_s, r.class_name))
    # sed_scores_eval needs events of every class it scores: leave out classes without any.
    present = [c for c in class_names if any(lbl == c for evs in truth.values() for *_, lbl in evs)]
    absent = [c for c in class_names if c not in present]
    result: dict[str, Any] = {"classes": present, "classes_without_events": absent}
    if not present:
        result["error"] = "no reference events: PSDS is undefined"
        return result
    columns = [list(class_names).index(c) for c in present]
    frames = {}
    for f in files:
        s = np.asarray(scores[f], dtype=np.float64).reshape(-1, len(class_names))
        s = np.round(s[:, columns], score_decimals)  # (frames, present classes)
        if s.shape[0] == 0:
            s = np.zeros((1, len(present)))
        edges = frame_boundaries_s(s.shape[0], hop_s, first_center_s)
        edges[-1] = max(edges[-1], edges[-2] + 1e-3)
        frames[f] = create_score_dataframe(s, edges, present)
    durations = {f: max(float(durations_s[f]), float(frames[f]["offset"].iloc[-1])) for f in files}
    for name, params in PSDS_SCENARIOS.items():
        if params["cttc_threshold"] is not None and len(present) < 2:
            # Cross-triggers are counted against the events of *other* classes: with one
            # class there are none, and sed_scores_eval fails on the empty set.
            result[name] = {"error": "not computable: cross-triggers need reference events of "
                                     f"at least two classes (only {present[0]})", "params": params}
            continue
        try:
            value, single, _roc, _single_rocs = intersection_based.psds(
                scores=frames, ground_truth=truth, audio_durations=durations, **params)
        except Exception as exc:  # a data set the library cannot score: a report, not a crash
            result[name] = {"error": f"not computable: sed_scores_eval failed "
                                     f"({type(exc).__name__}: {exc})", "params": params}
            continue
        result[name] = {
            "value": float(value),
            "class_wise": {c: float(v) for c, v in single.items()},
            "params": params,
        }
    # Curves over the full range (PSDS truncates its ROC at max_efpr).
    stats, _ids = intersection_based.accumulated_intermediate_statistics(
        scores=frames, ground_truth=truth, dtc_threshold=0.7, gtc_threshold=0.7)
    hours = sum(durations.values()) / 3600.0
    curves = {}
    for c, (thresholds, st) in stats.items():
        fa_h = np.asarray(st["fps"], float) / hours
        recall = np.asarray(st["tps"], float) / max(int(st["n_ref"]), 1)
        order = np.argsort(-np.asarray(thresholds, float), kind="stable")  # high threshold first
        curves[c] = _downsample_curve(fa_h[order], recall[order],
                                      np.asarray(thresholds, float)[order])
    result["curves"] = {"kind": "intersection-based (DTC=GTC=0.7), frame scores thresholded",
                        "class_wise": curves}
    return result
