"""`harken eval`: run the daemon's own pipeline over a data set and score its events.

Every file goes through `service.pipeline.analyse_blocks` — the same log-mel front end,
ONNX scorer and `EventDecider` (with the config's per-class overrides and sensitivity)
the daemon runs — and the events it would have published are matched against the
ground truth (`models.metrics`). Three kinds of evaluation set:

- a MANIFEST.csv split (`--data DIR --split dev`): each target clip one event, negatives
  (background, confuser_*) count false alarms;
- a DCASE-style TSV (`--tsv FILE`, audio under `--data` or beside the TSV);
- seeded DCASE-2017-Task-2-style mixtures built from a manifest split (`--scenes N`).

Outputs in `--out`: report.json (every figure), report.md, and PNG plots. Needs the
runtime and the [eval] extra (sed_scores_eval, matplotlib); no torch.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import sys
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from models.manifest import (
    Annotation,
    GroundTruth,
    ManifestError,
    manifest_annotations,
    read_manifest,
    read_tsv,
)
from models.metrics import (
    DEFAULT_COLLAR_S,
    NONE_COLUMN,
    Detection,
    EventMetrics,
    cross_trigger_matrix,
    event_metrics,
    false_alarm_rates,
    flicker_stats,
    latency_stats,
    psds_and_curves,
)
from service.audio.sources import TARGET_RATE
from service.decision import DecisionParams
from service.detector import Detector

log = logging.getLogger(__name__)

REPORT_SCHEMA = 1
EVAL_EBRS_DB = (-6.0, 0.0, 6.0)


@dataclass(frozen=True)
class EvalItem:
    """One file to analyse: on disk (`path`) or in memory (`audio`, for scenes)."""

    file: str
    path: Path | None = None
    audio: np.ndarray | None = None
    #: The manifest class of the file (a negative kind for files without events).
    true_class: str = "background"
    #: Where the file is listed, for messages (MANIFEST.csv:LINE).
    where: str = ""


@dataclass
class EvalSet:
    """Files to analyse, their reference events, and how the set was made."""

    kind: str  # manifest | tsv | scenes
    items: list[EvalItem]
    references: list[Annotation]
    description: dict[str, Any] = field(default_factory=dict)
    #: Scenes only: the event-to-background ratio each reference was mixed at.
    ebr_db: dict[Annotation, float] = field(default_factory=dict)


@dataclass
class FileResult:
    file: str
    duration_s: float
    detections: list[Detection]
    scores: np.ndarray  # (frames, classes) raw network scores


# ----------------------------------------------------------------- evaluation sets


def manifest_set(data: str | Path, split: str | None = "dev", span: str = "active",
                 open_licences_only: bool = False) -> EvalSet:
    """The rows of one manifest split: target clips with one event, negatives with none."""
    rows = read_manifest(data, split=split, open_licences_only=open_licences_only)
    if not rows:
        raise ManifestError(f"{Path(data)}: no manifest rows for split {split!r}")
    refs = manifest_annotations(rows, span=span)
    items = [EvalItem(r.path, r.file, None, r.class_name, r.where) for r in rows]
    classes = Counter(r.class_name if r.is_target else ("background" if r.class_name == "background"
                      else "confuser_*") for r in rows)
    return EvalSet("manifest", items, refs, {
        "data": str(Path(data)), "split": split, "span": span,
        "open_licences_only": open_licences_only, "files_by_class": dict(sorted(classes.items())),
    })


def negative_items(folder: str | Path, split: str = "dev") -> tuple[list[EvalItem], dict[str, Any]]:
    """Every chunk of one split of a built negatives folder (shared/data/negatives recipe)
    as a file without events: hours of speech, music, game sound and ambience for the
    false alarms per hour."""
    from models.negatives import read_negatives_csv

    folder = Path(folder)
    try:
        rows = [r for r in read_negatives_csv(folder) if r["split"] == split]
    except (FileNotFoundError, ValueError) as exc:
        raise ManifestError(str(exc)) from None
    if not rows:
        raise ManifestError(f"{folder / 'NEGATIVES.csv'}: no chunks of split {split!r}")
    items = [
        EvalItem(f"negatives/{r['path']}", folder / r["path"], None, r["class"], f"NEGATIVES.csv:{i + 2}")
        for i, r in enumerate(rows)
    ]
    hours: dict[str, float] = defaultdict(float)
    for r in rows:
        hours[r["class"]] += float(r.get("duration_s") or 0.0) / 3600
    return items, {
        "folder": str(folder), "split": split, "chunks": len(rows),
        "hours": round(sum(hours.values()), 3), "hours_by_kind": {k: round(v, 3) for k, v in sorted(hours.items())},
        "packages": len({r["source"] for r in rows}),
    }


def tsv_set(tsv: str | Path, audio_dir: str | Path | None, class_names: Sequence[str]) -> EvalSet:
    """Files and events of a DCASE-style TSV (files listed alone are negatives)."""
    truth: GroundTruth = read_tsv(tsv, class_names, audio_dir)
    items = [EvalItem(f, truth.root / f, None, "background", f"{tsv}") for f in truth.files]
    return EvalSet("tsv", items, list(truth.annotations), {
        "tsv": str(tsv), "audio_dir": str(truth.root)})


def scene_set(data: str | Path, split: str | None, n: int, seed: int, scene_s: float = 30.0,
              ebrs_db: Sequence[float] = EVAL_EBRS_DB, open_licences_only: bool = False,
              write_to: Path | None = None) -> EvalSet:
    """`n` seeded DCASE-2017-style mixtures from a manifest split (events into beds of
    background/confuser audio at the given EBRs); optionally written as FLAC + TSV."""
    from models.scenes import build_scenes, write_scenes

    rows = read_manifest(data, split=split, open_licences_only=open_licences_only)
    scenes = build_scenes(rows, n, np.random.default_rng(seed), scene_s=scene_s,
                          ebrs_db=tuple(ebrs_db))
    items = [EvalItem(s.name, None, s.audio, "background", f"scene {s.name}") for s in scenes]
    refs = [e.annotation for s in scenes for e in s.events]
    ebr = {e.annotation: e.ebr_db for s in scenes for e in s.events}
    written = str(write_scenes(scenes, write_to)) if write_to is not None else None
    return EvalSet("scenes", items, refs, {
        "data": str(Path(data)), "split": split, "scenes": n, "seed": seed, "scene_s": scene_s,
        "ebrs_db": list(ebrs_db), "open_licences_only": open_licences_only,
        "scenes_tsv": written,
    }, ebr)


# ----------------------------------------------------------------- running the pipeline


def decision_params(detector: Detector, config: str | Path | None = None) -> tuple[
        dict[str, DecisionParams], float | None]:
    """The per-class decision parameters and arbitration margin the daemon would use with
    this config (model defaults, config overrides, then the configured sensitivity)."""
    from service.config import Settings, load_settings
    from service.daemon import class_params

    settings = load_settings(config) if config else Settings()
    base = class_params(settings, detector)
    sensitivity = {name: c.sensitivity for name, c in settings.classes.items()}
    params = {name: p.with_sensitivity(sensitivity.get(name, 0.5)) for name, p in base.items()}
    return params, settings.decision.arbitration_margin


#: The quiet room a lead-in plays before each file (`harken eval --lead-in-s`), dBFS.
LEAD_IN_DBFS = -65.0


def lead_in_floor(file: str, lead_in_s: float, hop_samples: int) -> np.ndarray:
    """`lead_in_s` (rounded to whole frames) of a steady white floor at `LEAD_IN_DBFS`,
    seeded by the file's name: the same floor before the same file in every run."""
    n = round(lead_in_s * TARGET_RATE / hop_samples) * hop_samples
    rng = np.random.default_rng(zlib.crc32(file.encode()))
    return (rng.standard_normal(n) * 10 ** (LEAD_IN_DBFS / 20)).astype(np.float32)


def analyse_items(
    items: Sequence[EvalItem],
    detector: Detector,
    params: Mapping[str, DecisionParams],
    arbitration_margin: float | None,
    progress: bool = True,
    lead_in_s: float = 0.0,
) -> tuple[list[FileResult], list[dict[str, str]]]:
    """Run the daemon's pipeline over every item; unreadable files are listed, not fatal.

    With `lead_in_s`, each file plays after that long of a quiet room (`lead_in_floor`), as
    a microphone's running stream hears a sound begin, instead of as a stream of its own
    whose past is its first frame; times and scores are the file's own (a detection in the
    lead-in is kept, its onset at 0)."""
    from tqdm import tqdm

    from service.audio.sources import SourceError, iter_file
    from service.pipeline import FILE_BLOCK_S, analyse_blocks

    hop_samples = detector.contract.features.hop_samples
    results: list[FileResult] = []
    failed: list[dict[str, str]] = []
    bar = tqdm(items, desc="harken eval", unit="file", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    for item in bar:
        floor = lead_in_floor(item.file, lead_in_s, hop_samples) if lead_in_s > 0 else None
        try:
            if item.audio is not None:
                blocks: Iterable[np.ndarray] = [item.audio]
            else:
                assert item.path is not None
                blocks = iter_file(item.path, block_s=FILE_BLOCK_S)
            if floor is not None:
                blocks = itertools.chain([floor], blocks)
            duration, events, scores = analyse_blocks(blocks, detector, params, arbitration_margin,
                                                      keep_scores=True)
        except SourceError as exc:
            log.warning("%s: %s", item.where or item.file, exc)
            failed.append({"file": item.file, "where": item.where, "error": str(exc)})
            continue
        lead = 0.0
        if floor is not None:
            lead = floor.shape[0] / TARGET_RATE
            duration -= lead
            scores = scores[floor.shape[0] // hop_samples :]
        detections = [
            Detection(item.file, e.class_name, max(e.start_s - lead, 0.0), max(e.end_s - lead, 0.0),
                      max(e.detected_s - lead, 0.0), e.peak_score, e.flicker)
            for e in events
        ]
        results.append(FileResult(item.file, duration, detections, scores))
    return results, failed


# ----------------------------------------------------------------- the report


def _round(value: Any, digits: int = 4) -> Any:
    """Round floats in nested data for a readable JSON; NaN/inf become None."""
    if isinstance(value, float | np.floating):
        v = float(value)
        return round(v, digits) if math.isfinite(v) else None
    if isinstance(value, dict):
        return {k: _round(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_round(v, digits) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    return value


def _ebr_breakdown(evalset: EvalSet, metrics: EventMetrics,
                   class_names: Sequence[str]) -> dict[str, Any]:
    """Scenes: recall per event-to-background ratio, overall and per class."""
    if not evalset.ebr_db:
        return {}
    hit = {ref for ref, _ in metrics.hits}
    out: dict[str, Any] = {}
    for ebr in sorted(set(evalset.ebr_db.values())):
        refs = [r for r, e in evalset.ebr_db.items() if e == ebr]
        per_class = {}
        for c in class_names:
            rc = [r for r in refs if r.class_name == c]
            per_class[c] = {"n_ref": len(rc),
                            "recall": (sum(r in hit for r in rc) / len(rc)) if rc else None}
        out[f"{ebr:+g}"] = {"n_ref": len(refs),
                            "recall": (sum(r in hit for r in refs) / len(refs)) if refs else None,
                            "class_wise": per_class}
    return out


def _false_alarms_by_kind(detections: Sequence[Detection], negatives: Mapping[str, float],
                          true_class: Mapping[str, str], class_names: Sequence[str]) -> dict[str, Any]:
    """False alarms on files without events, by the kind of file (confuser_dishes,
    confuser_music, background...) and reported class, with each kind's hours."""
    hours: dict[str, float] = defaultdict(float)
    for file, seconds in negatives.items():
        hours[true_class.get(file, "background")] += seconds / 3600
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for d in detections:
        if d.file in negatives:
            counts[true_class.get(d.file, "background")][d.class_name] += 1
    out = {}
    for kind in sorted(hours, key=lambda k: -sum(counts[k].values())):
        total = sum(counts[kind].values())
        out[kind] = {"hours": round(hours[kind], 3), "false_alarms": total,
                     "per_hour": round(total / hours[kind], 2) if hours[kind] else None,
                     "by_class": {c: counts[kind][c] for c in class_names if counts[kind][c]}}
    return out


def _overlap_recall(references: Sequence[Annotation], detections: Sequence[Detection],
                    class_names: Sequence[str], collar_s: float) -> dict[str, Any]:
    """Share of true events that got a same-class report anywhere inside them (± collar):
    recall without the onset condition, which tells a late or early decision from a miss."""
    by_file: dict[str, list[Detection]] = defaultdict(list)
    for d in detections:
        by_file[d.file].append(d)
    found: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for r in references:
        total[r.class_name] += 1
        if any(d.class_name == r.class_name and d.onset_s <= r.offset_s + collar_s
               and d.offset_s >= r.onset_s - collar_s for d in by_file[r.file]):
            found[r.class_name] += 1
    n = sum(total.values())
    return {"overall": (sum(found.values()) / n) if n else None,
            "class_wise": {c: (found[c] / total[c]) if total[c] else None for c in class_names}}


def _peak_in(scores: np.ndarray, c: int, start_s: float, end_s: float, hop_s: float,
             first_center_s: float) -> float:
    if scores.shape[0] == 0:
        return 0.0
    t = first_center_s + hop_s * np.arange(scores.shape[0])
    inside = (t >= start_s) & (t <= end_s)
    return float(scores[inside, c].max()) if inside.any() else 0.0


def worst_cases(evalset: EvalSet, results: Sequence[FileResult], metrics: EventMetrics,
                class_names: Sequence[str], hop_s: float, first_center_s: float,
                limit: int = 6) -> list[dict[str, Any]]:
    """Files with the most errors, taking turns between missed events, false alarms (in
    audio without target sounds), wrong classes and surplus reports of true events;
    within a kind, most errors and then most confident mistake first."""
    by_file = {r.file: r for r in results}
    errors: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for ref in metrics.missed:
        res = by_file.get(ref.file)
        peak = (_peak_in(res.scores, class_names.index(ref.class_name), ref.onset_s,
                         ref.offset_s, hop_s, first_center_s) if res else 0.0)
        errors[ref.file].append({"kind": "missed", "class": ref.class_name,
                                 "onset_s": ref.onset_s, "offset_s": ref.offset_s,
                                 "severity": 1.0 - peak})
    has_events = {ref.file for ref in evalset.references}
    for det in metrics.insertions:
        # A report in audio without any target sound, or a surplus one next to a true event.
        kind = "extra_report" if det.file in has_events else "false_alarm"
        errors[det.file].append({"kind": kind, "class": det.class_name,
                                 "onset_s": det.onset_s, "offset_s": det.offset_s,
                                 "severity": det.peak_score or 0.0})
    for ref, det in metrics.substitutions:
        errors[det.file].append({"kind": "wrong_class", "class": det.class_name,
                                 "true_class": ref.class_name, "onset_s": det.onset_s,
                                 "offset_s": det.offset_s, "severity": det.peak_score or 0.0})
    # Rank within each kind of mistake, then take turns, so that one kind (say, a
    # fragmented cry in many clips) does not crowd the others out of the plots.
    queues: dict[str, list[tuple[str, list[dict[str, Any]]]]] = defaultdict(list)
    for f, errs in errors.items():
        errs.sort(key=lambda e: -e["severity"])
        queues[errs[0]["kind"]].append((f, errs))
    for queue in queues.values():
        queue.sort(key=lambda kv: (-len(kv[1]), -kv[1][0]["severity"], kv[0]))
    picked: list[tuple[str, list[dict[str, Any]]]] = []
    while len(picked) < limit and any(queues.values()):
        for kind in ("missed", "false_alarm", "wrong_class", "extra_report"):
            if queues[kind] and len(picked) < limit:
                picked.append(queues[kind].pop(0))
    return [{"file": f, "errors": [_round(e) for e in errs]} for f, errs in picked]


def build_report(
    evalset: EvalSet,
    results: Sequence[FileResult],
    failed: Sequence[dict[str, str]],
    detector: Detector,
    params: Mapping[str, DecisionParams],
    arbitration_margin: float | None,
    collar_s: float = DEFAULT_COLLAR_S,
    with_psds: bool = True,
    worst: int = 6,
) -> dict[str, Any]:
    """Every figure of one evaluation as plain data (the content of report.json)."""
    class_names = list(detector.class_names)
    features = detector.contract.features
    hop_s, first_center_s = features.hop_s, float(features.frame_center_s(0))
    analysed = {r.file for r in results}
    references = [r for r in evalset.references if r.file in analysed]
    detections = [d for r in results for d in r.detections]
    durations = {r.file: r.duration_s for r in results}
    true_class = {i.file: i.true_class for i in evalset.items}
    files_with_events = {r.file for r in references}
    negatives = {f: d for f, d in durations.items() if f not in files_with_events}

    onset = event_metrics(references, detections, class_names, collar_s)
    onset_offset = event_metrics(references, detections, class_names, collar_s,
                                 evaluate_offset=True)
    total_s = float(sum(durations.values()))
    stray = len(onset.insertions) + len(onset.substitutions)
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": {
            "path": str(detector.path), "name": detector.contract.model_name,
            "version": detector.contract.model_version, "classes": class_names,
        },
        "decision": {"params": {c: p.to_dict() for c, p in params.items()},
                     "arbitration_margin": arbitration_margin},
        "evaluation_set": {"kind": evalset.kind, **evalset.description},
        "dataset": {
            "files": len(results), "failed_files": len(failed),
            "duration_s": round(total_s, 3), "negative_files": len(negatives),
            "negative_duration_s": round(float(sum(negatives.values())), 3),
            "events_by_class": {c: sum(r.class_name == c for r in references) for c in class_names},
        },
        "event_based": onset.to_dict(),
        "event_based_onset_offset": onset_offset.to_dict(),
        "false_alarms": false_alarm_rates(detections, negatives, class_names),
        "false_alarms_by_kind": _false_alarms_by_kind(detections, negatives, true_class, class_names),
        "insertions_per_hour": (stray / (total_s / 3600.0)) if total_s else None,
        "cross_trigger": cross_trigger_matrix(references, detections, [r.file for r in results],
                                              class_names, true_class, collar_s),
        "overlap_recall": _overlap_recall(references, detections, class_names, collar_s),
        "latency": latency_stats(onset.hits, class_names),
        "flicker": flicker_stats(onset.hits, detections, class_names),
        "ebr_breakdown": _ebr_breakdown(evalset, onset, class_names),
        "worst_cases": worst_cases(evalset, results, onset, class_names, hop_s, first_center_s,
                                   worst),
        "failed": list(failed),
        "per_file": [
            {"file": r.file, "duration_s": round(r.duration_s, 3), "class": true_class.get(r.file),
             "references": [[a.class_name, a.onset_s, a.offset_s] for a in references
                            if a.file == r.file],
             "detections": [[d.class_name, d.onset_s, d.offset_s, d.detected_s, d.peak_score]
                            for d in r.detections]}
            for r in results
        ],
    }
    if with_psds:
        started = time.perf_counter()
        try:
            report["psds"] = psds_and_curves({r.file: r.scores for r in results}, durations,
                                             references, class_names, hop_s, first_center_s)
        except ImportError as exc:
            report["psds"] = {"error": f"sed_scores_eval unavailable ({exc}); "
                                       "pip install '.[eval]'"}
        report["psds"]["seconds"] = round(time.perf_counter() - started, 2)
    else:
        report["psds"] = {"error": "skipped (--no-psds)"}
    return _round(report)


# ----------------------------------------------------------------- text and markdown


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


TABLE_HEADER = ("class", "ref", "sys", "TP", "FP", "FN", "P", "R", "F1", "ER", "R ovl", "FA/h",
                "lat p50", "lat p90", "flicker")


def class_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """The per-class table (and an overall row) as strings."""
    eb, fa = report["event_based"], report["false_alarms"]
    lat, fl, ovl = report["latency"], report["flicker"], report["overlap_recall"]
    rows = []
    for c in report["model"]["classes"]:
        k = eb["class_wise"][c]
        rows.append([c, str(k["n_ref"]), str(k["n_sys"]), str(k["tp"]), str(k["fp"]), str(k["fn"]),
                     _fmt(k["precision"]), _fmt(k["recall"]), _fmt(k["f1"]), _fmt(k["error_rate"]),
                     _fmt(ovl["class_wise"][c]), _fmt(fa["class_wise"][c]["per_hour"], 1),
                     _fmt(lat["class_wise"][c]["median_s"]), _fmt(lat["class_wise"][c]["p90_s"]),
                     _fmt(fl["class_wise"][c]["changes_per_event"])])
    o = eb["overall"]
    rows.append(["overall", str(o["n_ref"]), str(o["n_sys"]), str(o["tp"]), str(o["fp"]),
                 str(o["fn"]), _fmt(o["precision"]), _fmt(o["recall"]), _fmt(o["f1"]),
                 _fmt(o["error_rate"]), _fmt(ovl["overall"]), _fmt(fa["per_hour"], 1),
                 _fmt(lat["overall"]["median_s"]),
                 _fmt(lat["overall"]["p90_s"]), _fmt(fl["overall"]["changes_per_event"])])
    return rows


def format_table(report: Mapping[str, Any]) -> str:
    """The per-class table as aligned text (what `harken eval` prints)."""
    rows = [list(TABLE_HEADER), *class_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_HEADER))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    ds, fa = report["dataset"], report["false_alarms"]
    psds = report.get("psds", {})
    extra = [
        f"files {ds['files']} ({ds['duration_s'] / 60:.1f} min), negative audio "
        f"{fa['negative_duration_s'] / 60:.1f} min in {fa['negative_files']} files; "
        f"onset collar {report['event_based']['collar_s']:g} s; latency in s",
    ]
    if "psds1" in psds:
        extra.append(f"PSDS1 {_psds_value(psds, 'psds1')}  PSDS2 {_psds_value(psds, 'psds2')}")
    elif "error" in psds:
        extra.append(f"PSDS not computed: {psds['error']}")
    if report.get("lead_in"):
        extra.append(f"each file after {report['lead_in']['seconds']:g} s of a quiet room "
                     f"({report['lead_in']['floor_dbfs']:g} dBFS)")
    if ds["failed_files"]:
        extra.append(f"{ds['failed_files']} file(s) could not be read: see report.json 'failed'")
    return "\n".join([*lines, "", *extra])


def _psds_value(psds: Mapping[str, Any], scenario: str) -> str:
    """A PSDS figure, or why it could not be computed on this data."""
    entry = psds.get(scenario, {})
    return f"{entry['value']:.3f}" if "value" in entry else f"– ({entry.get('error', 'not computed')})"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def format_markdown(report: Mapping[str, Any], plots: Mapping[str, Any], command: str) -> str:
    """report.md: the tables, the plots, and how the figures were measured."""
    m, ds, es = report["model"], report["dataset"], report["evaluation_set"]
    fa, eb = report["false_alarms"], report["event_based"]
    unreadable = (f"; {ds['failed_files']} unreadable (listed in report.json)"
                  if ds["failed_files"] else "")
    lines = [
        f"# harken evaluation: {m['name']} {m['version']}",
        "",
        f"- model: `{m['path']}`",
        f"- evaluation set: {es['kind']} "
        + ", ".join(f"{k}={v}" for k, v in es.items() if k != "kind" and v not in (None, False)),
        f"- {ds['files']} files, {ds['duration_s'] / 60:.1f} min; negative audio "
        f"{fa['negative_duration_s'] / 60:.1f} min in {fa['negative_files']} files"
        + unreadable,
        f"- created {report['created_at']} with `{command}`",
        "",
        "## Events (DCASE 2017 Task 2 event-based, onset collar "
        f"{eb['collar_s']:g} s; the daemon's decisions)",
        "",
        _md_table(TABLE_HEADER, class_rows(report)),
        "",
        "P/R/F1/ER: event-based precision, recall, F1 and error rate (overall = micro; ER "
        "overall counts substitutions). R ovl: share of true events with a same-class report "
        "anywhere inside them (no onset condition). FA/h: reported events per hour of "
        "negative audio. "
        "Latency: seconds from the true onset to the decision (median, 90th percentile). "
        "Flicker: on/off changes of the decision inside each detected event.",
        "",
        f"Macro F1 {_fmt(eb['macro']['f1'])}, macro ER {_fmt(eb['macro']['error_rate'])}; "
        f"with offsets also matched: F1 {_fmt(report['event_based_onset_offset']['overall']['f1'])}"
        f", ER {_fmt(report['event_based_onset_offset']['overall']['error_rate'])}. "
        f"Unmatched reports per hour of all audio: {_fmt(report['insertions_per_hour'], 1)}.",
        "",
    ]
    psds = report.get("psds", {})
    lines += ["## Threshold-independent (frame scores)", ""]
    if "psds1" in psds:
        lines += [
            f"PSDS1 **{_psds_value(psds, 'psds1')}** (DTC=GTC=0.7), PSDS2 "
            f"**{_psds_value(psds, 'psds2')}** (DTC=GTC=0.1, CTTC=0.3, α_ct=0.5), α_st=1, "
            "max eFPR 100/h, computed with sed_scores_eval on the raw network scores.",
            "",
        ]
        if "fa_vs_recall" in plots:
            lines += [f"![false alarms per hour vs recall]({plots['fa_vs_recall']})", ""]
    else:
        lines += [f"PSDS not computed: {psds.get('error', 'unknown reason')}", ""]
    ct = report["cross_trigger"]
    lines += ["## Cross-triggers (true class → reported class)", "",
              _md_table(["true \\ reported", *ct["columns"]],
                        [[r, *(str(ct["matrix"][r][c]) for c in ct["columns"])]
                         for r in ct["rows"]]),
              "",
              "A report overlapping a true event (± collar) counts in its row; other reports count "
              f"in the row of the file's negative class. {NONE_COLUMN}: true events with no report "
              "(negative rows: files without any).", ""]
    if "cross_trigger" in plots:
        lines += [f"![cross-trigger matrix]({plots['cross_trigger']})", ""]
    kinds = [(k, v) for k, v in ct["confuser_kinds"].items()
             if sum(v[c] for c in m["classes"]) > 0][:10]
    if kinds:
        lines += ["Confusers that triggered most:", "",
                  _md_table(["confuser", *m["classes"]],
                            [[k, *(str(v[c]) for c in m["classes"])] for k, v in kinds]), ""]
    by_kind = report.get("false_alarms_by_kind") or {}
    if by_kind:
        lines += ["## False alarms by kind of audio without events", "",
                  _md_table(["kind", "hours", "false alarms", "per hour", "reported as"],
                            [[k, _fmt(v["hours"], 3), str(v["false_alarms"]), _fmt(v["per_hour"]),
                              ", ".join(f"{c} {n}" for c, n in v["by_class"].items()) or "-"]
                             for k, v in list(by_kind.items())[:15]]), ""]
    if report.get("ebr_breakdown"):
        lines += ["## Recall by event-to-background ratio", "",
                  _md_table(["EBR dB", "events", "recall", *m["classes"]],
                            [[k, str(v["n_ref"]), _fmt(v["recall"]),
                              *(_fmt(v["class_wise"][c]["recall"]) for c in m["classes"])]
                             for k, v in report["ebr_breakdown"].items()]), ""]
    if report["worst_cases"]:
        lines += ["## Worst cases", ""]
        for case, image in zip(report["worst_cases"], plots.get("timelines", []), strict=False):
            summary = ", ".join(f"{e['kind']} {e['class']} at {e['onset_s']:.1f} s"
                                for e in case["errors"][:4])
            lines += [f"- `{case['file']}`: {summary}", "", f"  ![{case['file']}]({image})", ""]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------- plots

_COLOURS = ("tab:red", "tab:orange", "tab:blue", "tab:green", "tab:purple", "tab:brown")


def _safe_name(file: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(file).stem)[:48]


def _case_spectrogram(item: EvalItem | None) -> np.ndarray | None:
    """Log-mel frames (T, n_mels) of a worst case's audio for its plot; None if unreadable."""
    from service.audio.features import LogMel
    from service.audio.sources import SourceError, read_audio

    if item is None:
        return None
    try:
        audio = item.audio if item.audio is not None else read_audio(item.path) if item.path else None
    except (SourceError, OSError):
        return None
    return None if audio is None else LogMel().frames(audio)


def write_plots(report: Mapping[str, Any], results: Sequence[FileResult],
                references: Sequence[Annotation], params: Mapping[str, DecisionParams],
                hop_s: float, first_center_s: float, out: Path,
                items: Sequence[EvalItem] = ()) -> dict[str, Any]:
    """PNG plots; returns their paths relative to `out` (for report.md). With `items`, each
    worst case's timeline gets the log-mel spectrogram of its audio above the scores, and
    long files are shown around their first mistake."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(report["model"]["classes"])
    colour = {c: _COLOURS[i % len(_COLOURS)] for i, c in enumerate(classes)}
    plots: dict[str, Any] = {}

    # Cross-trigger matrix.
    ct = report["cross_trigger"]
    matrix = np.array([[ct["matrix"][r][c] for c in ct["columns"]] for r in ct["rows"]], float)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(ct["columns"]), 1.0 + 0.6 * len(ct["rows"])))
    shown = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(shown, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(ct["columns"])), ct["columns"], rotation=30, ha="right")
    ax.set_yticks(range(len(ct["rows"])), ct["rows"])
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center",
                    color="white" if shown[i, j] > 0.6 else "black")
    ax.set_xlabel("reported class")
    ax.set_ylabel("true class")
    ax.set_title("cross-triggers (counts; shade = share of row)")
    fig.tight_layout()
    fig.savefig(out / "cross_trigger.png", dpi=110)
    plt.close(fig)
    plots["cross_trigger"] = "cross_trigger.png"

    # False alarms per hour vs recall, per class, with the daemon's operating point.
    psds = report.get("psds", {})
    if "curves" in psds:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for c, curve in psds["curves"]["class_wise"].items():
            x, y = np.asarray(curve["fa_per_hour"], float), np.asarray(curve["recall"], float)
            keep = (x > 0) | (y > 0)  # the trivial point of an infinite threshold
            ax.plot(np.maximum(x[keep], 1e-2), y[keep], color=colour.get(c), linewidth=1.0,
                    marker=".", markersize=2, label=f"{c} (frame scores)")
        hours = report["dataset"]["duration_s"] / 3600.0
        for c in classes:
            counts = report["event_based"]["class_wise"][c]
            if counts["recall"] is not None and hours > 0:
                # Same axis as the curves: false reports per hour of ALL audio.
                ax.plot([max(counts["fp"] / hours, 1e-2)], [counts["recall"]], marker="o",
                        color=colour[c], linestyle="none", label=f"{c} (daemon decisions)")
        ax.set_xscale("log")
        ax.set_xlim(1e-2, max(100.0, ax.get_xlim()[1]))
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("false reports per hour (all audio)")
        ax.set_ylabel("recall")
        ax.set_title("false alarms/h vs recall (intersection-based, DTC=GTC=0.7)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        fig.savefig(out / "fa_vs_recall.png", dpi=110)
        plt.close(fig)
        plots["fa_vs_recall"] = "fa_vs_recall.png"

    # Score timelines with ground truth for the worst cases.
    by_file = {r.file: r for r in results}
    item_by_file = {i.file: i for i in items}
    timelines: list[str] = []
    (out / "timelines").mkdir(exist_ok=True)
    for old in (out / "timelines").glob("*.png"):  # plots of an earlier run into this --out
        old.unlink()
    for n, case in enumerate(report["worst_cases"]):
        res = by_file.get(case["file"])
        if res is None:
            continue
        spec = _case_spectrogram(item_by_file.get(case["file"])) if item_by_file else None
        if spec is not None and spec.shape[0]:
            fig, (spec_ax, ax) = plt.subplots(2, 1, figsize=(10, 5.2), sharex=True,
                                              gridspec_kw={"height_ratios": [1.0, 1.3]})
            spec_ax.imshow(spec.T, origin="lower", aspect="auto", cmap="magma",
                           extent=(first_center_s, first_center_s + hop_s * spec.shape[0], 0, spec.shape[1]))
            spec_ax.set_ylabel("mel band")
        else:
            fig, ax = plt.subplots(figsize=(10, 3.2))
        t = first_center_s + hop_s * np.arange(res.scores.shape[0])
        for k, c in enumerate(classes):
            if res.scores.shape[0]:
                ax.plot(t, res.scores[:, k], color=colour[c], linewidth=1.0, label=c)
            ax.axhline(params[c].on_threshold, color=colour[c], linestyle=":", linewidth=0.8)
        for a in references:
            if a.file == case["file"]:
                ax.axvspan(a.onset_s, a.offset_s, color=colour[a.class_name], alpha=0.15)
                ax.text(a.onset_s, 1.06 + 0.04 * len(classes), f"true {a.class_name}", fontsize=7,
                        color=colour[a.class_name])
        for d in res.detections:
            # One lane per class above the scores: reported span, ▼ when it was decided.
            lane = 1.04 + 0.04 * classes.index(d.class_name)
            ax.plot([d.onset_s, d.offset_s], [lane, lane], color=colour[d.class_name], linewidth=3)
            if d.detected_s is not None:
                ax.plot([d.detected_s], [lane], marker="v", color="black", markersize=4)
        ax.set_ylim(-0.02, 1.08 + 0.04 * len(classes) + 0.06)
        if res.duration_s > 40.0 and case["errors"]:
            # A long negative stream: show the 20 s around its first mistake.
            first = min(e["onset_s"] for e in case["errors"])
            ax.set_xlim(max(0.0, first - 6.0), min(res.duration_s, first + 14.0))
        else:
            ax.set_xlim(0, max(res.duration_s, 1e-3))
        ax.set_xlabel("time (s)")
        ax.set_ylabel("score")
        errs = ", ".join(f"{e['kind']} {e['class']}" for e in case["errors"][:3])
        ax.set_title(f"{case['file']}  [{errs}]", fontsize=8)
        ax.legend(fontsize=7, loc="upper right", ncol=len(classes))
        fig.tight_layout()
        name = f"timelines/{n + 1:02d}_{_safe_name(case['file'])}.png"
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        timelines.append(name)
    plots["timelines"] = timelines
    return plots


# ----------------------------------------------------------------- entry point


@dataclass(frozen=True)
class EvalOptions:
    """What `harken eval` was asked to do."""

    out: Path
    data: Path | None = None
    model: Path | None = None
    split: str | None = "dev"
    tsv: Path | None = None
    scenes: int = 0
    seed: int = 0
    scene_s: float = 30.0
    ebrs_db: tuple[float, ...] = EVAL_EBRS_DB
    span: str = "active"
    open_licences_only: bool = False
    collar_s: float = DEFAULT_COLLAR_S
    config: Path | None = None
    worst: int = 6
    psds: bool = True
    write_scenes: bool = False
    progress: bool = True
    command: str = "harken eval"
    #: A built negatives folder: its chunks of the same split join as files without events.
    negatives: Path | None = None
    #: Seconds of a quiet room before each file (`analyse_items`); 0: each file alone.
    lead_in_s: float = 0.0


def run_evaluation(options: EvalOptions) -> dict[str, Any]:
    """Build the evaluation set, run the pipeline, write report.json, report.md and plots."""
    if options.lead_in_s < 0:
        raise ManifestError(f"--lead-in-s must be 0 or more seconds, got {options.lead_in_s}")
    detector = Detector.load(options.model)
    params, margin = decision_params(detector, options.config)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    if options.tsv is not None:
        evalset = tsv_set(options.tsv, options.data, detector.class_names)
    elif options.data is None:
        raise ManifestError("give --data DIR (a folder with MANIFEST.csv) or --tsv FILE")
    elif options.scenes > 0:
        evalset = scene_set(options.data, options.split, options.scenes, options.seed,
                            options.scene_s, options.ebrs_db, options.open_licences_only,
                            out / "scenes" if options.write_scenes else None)
    else:
        evalset = manifest_set(options.data, options.split, options.span,
                               options.open_licences_only)
    if options.negatives is not None:
        extra, summary = negative_items(options.negatives, options.split or "dev")
        evalset.items.extend(extra)
        evalset.description["negatives"] = summary
    started = time.perf_counter()
    results, failed = analyse_items(evalset.items, detector, params, margin, options.progress,
                                    options.lead_in_s)
    analysis_s = time.perf_counter() - started
    report = build_report(evalset, results, failed, detector, params, margin, options.collar_s,
                          options.psds, options.worst)
    audio_s = report["dataset"]["duration_s"]
    report["timing"] = {"analysis_s": round(analysis_s, 2),
                        "x_realtime": round(audio_s / analysis_s, 1) if analysis_s > 0 else None}
    report["command"] = options.command
    report["lead_in"] = ({"seconds": options.lead_in_s, "floor_dbfs": LEAD_IN_DBFS}
                         if options.lead_in_s > 0 else None)
    features = detector.contract.features
    plots = write_plots(report, results, evalset.references, params, features.hop_s,
                        float(features.frame_center_s(0)), out, evalset.items)
    report["plots"] = plots
    (out / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n",
                                     encoding="utf-8")
    (out / "report.md").write_text(format_markdown(report, plots, options.command),
                                   encoding="utf-8")
    return report
