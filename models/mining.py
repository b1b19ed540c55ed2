"""Hard-negative mining: where does a trained model fire on hours of negative audio?

The train negatives (never dev) are scored in 10-minute streams exactly as the daemon
scores a stream, the daemon's decisions run with thresholds a little below the tuned
ones (near misses are hard negatives too), and every reported event becomes a window of
the negatives array. The next training round mixes those windows into backgrounds more
often than chance would (`live.hard_negative_prob`).

    harken mine --checkpoint runs/live/best.pt --negatives NEG --out runs/live/hard.json
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.negatives import SAMPLE_RATE, NegativePool
from service.audio.features import FeatureParams, LogMel
from service.decision import DecisionParams, decide

#: Mining thresholds are the tuned ones times this: near misses count as hard negatives.
THRESHOLD_SCALE = 0.8
#: Audio kept around each false alarm: a little before its start (what led to it) and
#: at least this long.
PRE_S, MIN_WINDOW_S, MAX_WINDOW_S = 1.0, 3.0, 6.0


def _loosen(decisions: dict[str, DecisionParams], mining_threshold: float | None) -> dict[str, DecisionParams]:
    def loosen(p: DecisionParams) -> DecisionParams:
        on = mining_threshold if mining_threshold is not None else p.on_threshold * THRESHOLD_SCALE
        return replace(p, on_threshold=on, off_threshold=min(p.off_threshold, on))

    return {c: loosen(p) for c, p in decisions.items()}


def _is_mined(class_name: str, mined_classes: Collection[str] | None) -> bool:
    """Whether a report of `class_name` becomes a window or a clip's report (`--classes`)."""
    return mined_classes is None or class_name in mined_classes


def mine_confusers(
    score: Callable[[np.ndarray], np.ndarray],
    clips: list[tuple[str, str, np.ndarray]],
    decisions: dict[str, DecisionParams],
    class_names: tuple[str, ...],
    mining_threshold: float | None = None,
    mined_classes: Collection[str] | None = None,
) -> dict[str, Any]:
    """Score each household confuser clip `(name, kind, audio)` of the shared data's train
    split as a stream of its own; return false alarms per hour and, per clip that drew a
    report at the mining thresholds, how many (`live.hard_confuser_weight` uses them).
    With `mined_classes`, only reports of those classes count for a clip (the false alarms
    per hour still count every class)."""
    params = FeatureParams()
    logmel = LogMel(params)
    loose = _loosen(decisions, mining_threshold)
    hop, t0 = params.hop_s, float(params.frame_center_s(0))
    strict: Counter[str] = Counter()
    by_kind: Counter[str] = Counter()
    reports: dict[str, int] = {}
    seconds = 0.0
    for name, kind, audio in clips:
        seconds += audio.shape[0] / SAMPLE_RATE
        feats = logmel.frames(audio.astype(np.float32))
        if feats.shape[0] == 0:
            continue
        scores = score(feats)
        strict.update(e.class_name for e in decide(scores, class_names, decisions, hop, t0))
        found = [e for e in decide(scores, class_names, loose, hop, t0) if _is_mined(e.class_name, mined_classes)]
        if found:
            reports[name] = len(found)
            by_kind.update(f"{e.class_name} <- {kind}" for e in found)
    hours = max(seconds / 3600, 1e-9)
    return {
        "confuser_hours": round(seconds / 3600, 3),
        "confuser_fa_per_hour": {c: round(strict[c] / hours, 2) for c in class_names},
        "confuser_by_kind": dict(by_kind.most_common()),
        "confusers": reports,
    }


def mine(
    score: Callable[[np.ndarray], np.ndarray],
    pool: NegativePool,
    decisions: dict[str, DecisionParams],
    class_names: tuple[str, ...],
    stream_s: float = 600.0,
    mining_threshold: float | None = None,
    mined_classes: Collection[str] | None = None,
) -> dict[str, Any]:
    """Score the pool; return false alarms per hour (at the tuned decisions and at the
    mining thresholds) and the mined windows `[start_sample, n_samples]` in the pool.
    With `mined_classes`, only reports of those classes become windows (a round for one
    class's member learns from that class's false alarms); the figures count every class."""
    params = FeatureParams()
    logmel = LogMel(params)
    loose = _loosen(decisions, mining_threshold)
    n = int(stream_s * SAMPLE_RATE)
    windows: list[list[int]] = []
    window_classes: list[str] = []  # what each window was reported as
    strict_counts: Counter[str] = Counter()
    loose_counts: Counter[str] = Counter()
    by_kind: Counter[str] = Counter()
    starts = np.array([c.start for c in pool.chunks])
    hop, t0 = params.hop_s, float(params.frame_center_s(0))
    for start in range(0, pool.audio.shape[0], n):
        audio = pool.samples(start, start + n)
        feats = logmel.frames(audio)
        if feats.shape[0] == 0:
            continue
        scores = score(feats)
        for event in decide(scores, class_names, decisions, hop, t0):
            strict_counts[event.class_name] += 1
        for event in decide(scores, class_names, loose, hop, t0):
            loose_counts[event.class_name] += 1
            if not _is_mined(event.class_name, mined_classes):
                continue
            a = start + max(0, int((event.start_s - PRE_S) * SAMPLE_RATE))
            length = int(min(max(event.end_s - event.start_s + PRE_S, MIN_WINDOW_S), MAX_WINDOW_S) * SAMPLE_RATE)
            windows.append([a, length])
            window_classes.append(event.class_name)
            chunk = pool.chunks[int(np.searchsorted(starts, a, side="right") - 1)]
            by_kind[f"{event.class_name} <- {chunk.kind}"] += 1
    hours = pool.hours
    return {
        "negative_hours": round(hours, 3),
        "fa_per_hour": {c: round(strict_counts[c] / hours, 2) for c in class_names},
        "fa_per_hour_total": round(sum(strict_counts.values()) / hours, 2),
        "mined_per_hour": {c: round(loose_counts[c] / hours, 2) for c in class_names},
        "by_kind": dict(by_kind.most_common()),
        "windows": windows,
        "window_classes": window_classes,
    }


def cmd_mine(args: Any) -> int:
    from models.config import CLASSES, build_net, config_from_dict
    from models.tuning import torch_scorer

    score: Callable[[np.ndarray], np.ndarray]
    if Path(args.checkpoint).suffix == ".onnx":
        # A shipped model mines too (the next round needs no training checkpoint): its
        # contract carries the decisions and the licences it was trained under.
        from service.detector import Detector

        detector = Detector.load(args.checkpoint, threads=2)
        contract = detector.contract
        score, class_names = detector.scores, contract.class_names
        decisions = dict(contract.decision)
        licences = str(contract.training.get("licences", "all"))
    else:
        ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
        if "config" not in ckpt:
            raise ValueError(
                f"{args.checkpoint}: no training config inside (give best.pt or last.pt of `harken train`)"
            )
        cfg = config_from_dict(ckpt["config"], str(args.checkpoint))
        torch.set_num_threads(cfg.opt.threads)
        net = build_net(cfg, FeatureParams())
        # A training run's last.pt (resumable state) mines too: its net, the recipe's decisions.
        net.load_state_dict(ckpt["state"] if "state" in ckpt and "net" not in ckpt else ckpt["net"])
        decisions = {
            k: DecisionParams.from_dict(v) for k, v in ckpt.get("tuned", cfg.to_dict()["decision"]).items()
        }
        score, class_names, licences = torch_scorer(net, cfg.net.lookahead_frames), CLASSES, cfg.data.licences
    mined_classes = getattr(args, "classes", None)
    if mined_classes:
        unknown = sorted(set(mined_classes) - set(class_names))
        if unknown:
            raise ValueError(f"--classes: unknown class(es) {unknown} (the model's: {list(class_names)})")
    pool = NegativePool.load(args.negatives, "train", args.cache, licences)
    result = mine(score, pool, decisions, class_names, mining_threshold=args.threshold,
                  mined_classes=mined_classes)
    if args.data:
        result |= mine_confusers(score, confuser_clips(args.data, licences), decisions, class_names,
                                 args.threshold, mined_classes)
    if mined_classes:
        result["mined_classes"] = list(mined_classes)
    return _report(result, args)


def confuser_clips(data_dir: Path, licences: str) -> list[tuple[str, str, np.ndarray]]:
    """The train split's household confusers and backgrounds as the scenes use them
    (`models.data.ClipBank`, the first 20 s of each), named by their manifest path."""
    from models import data as D

    bank = D.ClipBank(D.select(D.read_clips(Path(data_dir)), "train", licences))
    pairs = zip(bank.negative_clips, bank.negatives, strict=True)
    return [(confuser_name(c, data_dir), c.class_name, audio) for c, audio in pairs]


def confuser_name(clip: Any, data_dir: Path) -> str:
    """A clip's name in mined results: its path inside the data folder."""
    return os.path.relpath(clip.path, data_dir)


def load_mined(paths: list[Path], confuser_clips: list[Any], data_dir: Path) -> tuple[
    list[tuple[int, int]], list[str], list[int]
]:
    """The windows of one or more mining runs (`harken mine --out`), joined for training.

    A window found more than once (by several runs, or twice by one) is kept once, so joining
    rounds does not draw it more often. The windows' classes are kept only when every run
    recorded them (older mining runs did not). Reports per household confuser clip are summed
    over the runs; an empty list when none of them scored the confusers (`harken mine --data`).
    """
    windows: list[tuple[int, int]] = []
    classes: list[str] = []
    seen: set[tuple[int, int]] = set()
    every_run_has_classes = True
    reports: Counter[str] = Counter()
    for path in paths:
        try:
            mined = json.loads(Path(path).read_text())
            run_windows = [(int(a), int(n)) for a, n in mined["windows"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"--hard-negatives {path}: not a `harken mine` result ({exc})") from exc
        run_classes = list(mined.get("window_classes", []))
        if len(run_classes) != len(run_windows):
            every_run_has_classes = False
            run_classes = [""] * len(run_windows)
        for window, cls in zip(run_windows, run_classes, strict=True):
            if window not in seen:
                seen.add(window)
                windows.append(window)
                classes.append(cls)
        reports.update({name: int(n) for name, n in mined.get("confusers", {}).items()})
    confuser_reports = [reports[confuser_name(c, data_dir)] for c in confuser_clips] if reports else []
    return windows, (classes if every_run_has_classes else []), confuser_reports


def _report(result: dict[str, Any], args: Any) -> int:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result))
    if "confusers" in result:
        print(
            f"{result['confuser_hours']} h of train confusers: {result['confuser_fa_per_hour']} false alarms/h "
            f"at the tuned decisions; {len(result['confusers'])} clips drew reports at the mining thresholds"
        )
        for kind, count in list(result["confuser_by_kind"].items())[:10]:
            print(f"  {count:5d}  {kind}")
    print(
        f"{result['negative_hours']} h of train negatives: {result['fa_per_hour_total']} false alarms/h "
        f"at the tuned decisions {result['fa_per_hour']}; {len(result['windows'])} windows mined "
        f"at {args.threshold or f'{THRESHOLD_SCALE}x the tuned'} thresholds -> {out}"
    )
    for kind, count in list(result["by_kind"].items())[:10]:
        print(f"  {count:5d}  {kind}")
    return 0
