"""Dev scoring, event metrics and per-class decision tuning with the daemon's own decisions."""

from __future__ import annotations

import itertools
import logging
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
import torch

from models import data as D
from models.config import CLASSES
from models.net import CompactTCN, FreqConvTCN
from service.audio.features import FeatureParams
from service.decision import DecisionParams, EventEnded, decide
from service.detector import pad_stream

log = logging.getLogger(__name__)

ONSET_COLLAR_S = 0.5


def torch_scorer(
    net: CompactTCN | FreqConvTCN, lookahead: int
) -> Callable[[np.ndarray], np.ndarray]:
    """Frame scores (T, C) of a training network on log-mel frames (T, n_mels), padded
    exactly as service.detector pads a stream."""
    context = net.receptive_field - lookahead
    net.eval()

    def score(feats: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = pad_stream(feats.astype(np.float32), context, lookahead)
            return torch.sigmoid(net(torch.from_numpy(x)[None]))[0].numpy()

    return score


def dev_scores(
    net: CompactTCN | FreqConvTCN, dev: Sequence[D.DevItem], lookahead: int
) -> list[np.ndarray]:
    """Frame scores (T, C) of every dev item, padded exactly as service.detector does."""
    score = torch_scorer(net, lookahead)
    return [score(item.features) for item in dev]


def _match(
    truth: list[tuple[float, float]], found: list[EventEnded]
) -> tuple[list[tuple[int, int]], list[int]]:
    """Greedy one-to-one matching of detections to truth by onset distance <= collar."""
    pairs = sorted(
        (
            (abs(f.start_s - t[0]), ti, fi)
            for ti, t in enumerate(truth)
            for fi, f in enumerate(found)
            if abs(f.start_s - t[0]) <= ONSET_COLLAR_S
        ),
    )
    used_t: set[int] = set()
    used_f: set[int] = set()
    matched = []
    for _, ti, fi in pairs:
        if ti not in used_t and fi not in used_f:
            used_t.add(ti)
            used_f.add(fi)
            matched.append((ti, fi))
    return matched, [fi for fi in range(len(found)) if fi not in used_f]


def event_metrics(
    dev: Sequence[D.DevItem],
    detections: Sequence[Sequence[EventEnded]],
    class_names: Sequence[str] = CLASSES,
) -> dict[str, Any]:
    """Per-class event P/R/F1 (500 ms onset collar), FA/h on negatives, cross-triggers,
    median latency and flicker (extra same-class detections per matched true event)."""
    stats = {
        c: {"tp": 0, "fp": 0, "fn": 0, "latency": [], "fragments": [], "crossings": [], "neg_fp": 0}
        for c in class_names
    }
    cross = {a: dict.fromkeys(class_names, 0) for a in class_names}
    neg_hours = sum(it.duration_s for it in dev if it.negative_only) / 3600
    for item, found in zip(dev, detections, strict=True):
        for c in class_names:
            truth = [(t[1], t[2]) for t in item.truth if t[0] == c]
            mine = [d for d in found if d.class_name == c]
            matched, unmatched = _match(truth, mine)
            s = stats[c]
            s["tp"] += len(matched)
            s["fn"] += len(truth) - len(matched)
            s["fp"] += len(unmatched)
            if item.negative_only:
                s["neg_fp"] += len(unmatched)
            for ti, fi in matched:
                s["latency"].append(mine[fi].detected_s - truth[ti][0])
                s["crossings"].append(mine[fi].flicker)
                on, off = truth[ti]
                s["fragments"].append(sum(1 for d in mine if d.start_s < off and d.end_s > on) - 1)
            for fi in unmatched:
                d = mine[fi]
                for other, on, off in item.truth:
                    if (
                        other != c
                        and other in cross
                        and d.start_s < off + ONSET_COLLAR_S
                        and d.end_s > on
                    ):
                        cross[other][c] += 1
                        break
    per_class = {}
    for c, s in stats.items():
        p = s["tp"] / max(s["tp"] + s["fp"], 1)
        r = s["tp"] / max(s["tp"] + s["fn"], 1)
        per_class[c] = {
            "precision": round(p, 3),
            "recall": round(r, 3),
            "f1": round(2 * p * r / max(p + r, 1e-9), 3),
            "tp": s["tp"],
            "fp": s["fp"],
            "fn": s["fn"],
            "fa_per_hour": round(s["neg_fp"] / max(neg_hours, 1e-9), 2),
            "median_latency_s": round(float(np.median(s["latency"])), 3) if s["latency"] else None,
            "flicker": round(float(np.mean(s["fragments"])), 3) if s["fragments"] else None,
            "score_flicker": (round(float(np.mean(s["crossings"])), 3) if s["crossings"] else None),
        }
    total_neg_fp = sum(s["neg_fp"] for s in stats.values())
    return {
        "per_class": per_class,
        "mean_f1": round(float(np.mean([v["f1"] for v in per_class.values()])), 4),
        "fa_per_hour": round(total_neg_fp / max(neg_hours, 1e-9), 2),
        "negative_hours": round(neg_hours, 3),
        "cross_trigger": cross,
    }


def recall_by_ebr(
    dev: Sequence[D.DevItem],
    detections: Sequence[Sequence[EventEnded]],
    class_names: Sequence[str] = CLASSES,
) -> dict[str, dict[str, dict[str, int]]]:
    """Events found on time (500 ms onset collar) per class and per event-to-background
    ratio of the dev scenes (the `:ebr+N` tag of their names): which loudness loses them.
    `heard`: events with a report of their class anywhere inside them, on time or not."""
    by_tag: dict[str, list[int]] = {}
    for i, item in enumerate(dev):
        tag = item.name.rpartition(":")[2]
        if not item.negative_only and tag.startswith("ebr"):
            by_tag.setdefault(tag[3:], []).append(i)
    out: dict[str, dict[str, dict[str, int]]] = {c: {} for c in class_names}
    for tag in sorted(by_tag, key=float):
        idx = by_tag[tag]
        per_class = event_metrics([dev[i] for i in idx], [detections[i] for i in idx], class_names)["per_class"]
        for c, m in per_class.items():
            if m["tp"] + m["fn"]:
                heard = sum(
                    any(d.class_name == c and d.start_s < off and d.end_s > on for d in detections[i])
                    for i in idx
                    for name, on, off in dev[i].truth
                    if name == c
                )
                out[c][f"{float(tag):+.0f} dB"] = {"found": m["tp"], "heard": heard, "events": m["tp"] + m["fn"]}
    return out


def run_decisions(
    scores: Sequence[np.ndarray],
    params: Mapping[str, DecisionParams],
    class_names: Sequence[str] = CLASSES,
) -> list[list[EventEnded]]:
    """The daemon's decisions (service.decision.decide) on each dev item's scores."""
    fp = FeatureParams()
    return [decide(s, class_names, params, fp.hop_s, float(fp.frame_center_s(0))) for s in scores]


def evaluate(
    scores: Sequence[np.ndarray], dev: Sequence[D.DevItem], params: Mapping[str, DecisionParams]
) -> dict[str, Any]:
    return event_metrics(dev, run_decisions(scores, params))


def class_metrics(
    single: Sequence[np.ndarray], dev: Sequence[D.DevItem], c: str, params: DecisionParams
) -> dict[str, Any]:
    """Event metrics of one class `c` from its score column alone (`single`: (T, 1) each)."""
    return event_metrics(dev, run_decisions(single, {c: params}, (c,)), (c,))["per_class"][c]


def at_on_threshold(params: DecisionParams, on: float) -> DecisionParams:
    """`params` at on-threshold `on`, the off-threshold scaled with it (never above it)."""
    off = round(min(params.off_threshold / params.on_threshold * on, on), 3)
    return replace(params, on_threshold=on, off_threshold=off)


SELECTION_THRESHOLDS = (0.5, 0.7, 0.9, 0.97, 0.99)


def selection_terms(
    scores: Sequence[np.ndarray],
    dev: Sequence[D.DevItem],
    base: Mapping[str, DecisionParams],
    thresholds: Sequence[float] = SELECTION_THRESHOLDS,
    fa_cost: float = 0.01,
) -> dict[str, float]:
    """The early-stopping metric's class terms: per class the best dev event F1 less
    `fa_cost` per false alarm an hour on dev negatives, over a few on-thresholds. A quick
    stand-in for the full tuning (`tune_decisions`) that ranks settings the same way: its
    grid reaches the 0.97 and 0.99 the tuned decisions end on (with 0.5-0.9 only, run E's
    in-run ranking disagreed with the tuned one), and false alarms cost what they cost there."""
    return selection_terms_of_sets({"dev": (scores, dev)}, [], [], base, thresholds, fa_cost)["dev"]


def selection_terms_of_sets(
    sets: Mapping[str, tuple[Sequence[np.ndarray], Sequence[D.DevItem]]],
    shared_scores: Sequence[np.ndarray],
    shared_items: Sequence[D.DevItem],
    base: Mapping[str, DecisionParams],
    thresholds: Sequence[float] = SELECTION_THRESHOLDS,
    fa_cost: float = 0.01,
) -> dict[str, dict[str, float]]:
    """`selection_terms` of each named set of scenes (its scores and items), each counted
    together with the shared items (the negatives every draw of scenes shares), whose
    decisions are run once for all sets: most of the hours are theirs."""
    terms: dict[str, dict[str, float]] = {name: {} for name in sets}
    for c in CLASSES:
        best = dict.fromkeys(sets, -np.inf)
        for on in thresholds:
            by_set = class_metrics_of_sets(sets, shared_scores, shared_items, c, at_on_threshold(base[c], on))
            for name, pc in by_set.items():
                best[name] = max(best[name], pc["f1"] - fa_cost * pc["fa_per_hour"])
        for name in sets:
            terms[name][c] = float(best[name])
    return terms


def class_metrics_of_sets(
    sets: Mapping[str, tuple[Sequence[np.ndarray], Sequence[D.DevItem]]],
    shared_scores: Sequence[np.ndarray],
    shared_items: Sequence[D.DevItem],
    c: str,
    params: DecisionParams,
) -> dict[str, dict[str, Any]]:
    """`class_metrics` of class `c` on each named set of scenes (its scores and items), each
    counted together with the shared items, whose decisions are run once for all sets: most
    of the hours are theirs."""
    column = CLASSES.index(c)
    decisions = {c: params}
    shared_found = run_decisions([s[:, column : column + 1] for s in shared_scores], decisions, (c,))
    out = {}
    for name, (scores, items) in sets.items():
        found = run_decisions([s[:, column : column + 1] for s in scores], decisions, (c,))
        out[name] = event_metrics([*items, *shared_items], [*found, *shared_found], (c,))["per_class"][c]
    return out


def selection_f1(
    scores: Sequence[np.ndarray],
    dev: Sequence[D.DevItem],
    base: Mapping[str, DecisionParams],
    thresholds: Sequence[float] = SELECTION_THRESHOLDS,
    fa_cost: float = 0.01,
) -> float:
    """Early-stopping metric: the mean over classes of `selection_terms`."""
    return float(np.mean(list(selection_terms(scores, dev, base, thresholds, fa_cost).values())))


#: On-thresholds the tuning always tries. 0.995 and 0.998 were tried (2.2 is tuned to 0.99,
#: the top, in every class) and taken out: with them the budget-first rule found settings
#: within 0.5 false alarms an hour that find 6 % of cries (a second seed of 2.2's recipe),
#: and chose them over every useful setting (model card, experiment log).
HIGH_ON_THRESHOLDS = (0.97, 0.99)


def tune_decisions(
    scores: Sequence[np.ndarray],
    dev: Sequence[D.DevItem],
    base: Mapping[str, DecisionParams],
    on_thresholds: Sequence[float],
    fa_budget: float | None,
    dur_scales: Sequence[float] = (1.0, 2.0, 4.0),
    max_min_duration_s: Mapping[str, float] | None = None,
    max_latency_s: Mapping[str, float] | None = None,
    onset_windows: Sequence[tuple[int, int]] = ((1, 1),),
    fa_cost: float = 0.01,
    onset_lookbacks_s: Sequence[float] = (0.0,),
    max_fa_per_hour: Mapping[str, float] | None = None,
    class_on_thresholds: Mapping[str, Sequence[float]] | None = None,
    onset_rises: Sequence[tuple[float, float]] = ((0.0, 0.0),),
    classes: Sequence[str] = CLASSES,
    onset_touches_s: Sequence[float] = (0.0,),
    onset_advances_s: Sequence[float] = (0.0,),
    onset_touch_thresholds: Sequence[float] = (1.0,),
    class_onset_touch_thresholds: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, DecisionParams]:
    """Per class of `classes` (the others keep `base`'s), the on-threshold, minimum duration,
    smoothing and onset window with the best dev F1 among those whose false alarms on dev
    negatives stay within `fa_budget` per hour; when none does (or `fa_budget` is None), the
    best of F1 - `fa_cost` * FA/h (each false alarm per hour costs that much F1). Settings
    whose median decision latency exceeds the class's bound in `max_latency_s` rank below
    every setting that keeps it, and so do settings whose false alarms per hour exceed the
    class's ceiling in `max_fa_per_hour` (the shipping rule's alarm floor as a constraint:
    an objective that does not know the floor picked 1.1 false smoke alarms an hour where
    settings within 1.0 existed). The threshold grid always reaches `HIGH_ON_THRESHOLDS`: a
    model confident on some negatives needs them. `onset_windows` scales the k-of-n onset window
    as (k factor, n factor): (2, 3) asks for twice the confident frames within three times
    the window, evidence gathered over a longer stretch that isolated confident moments on
    negatives do not reach, without moving the reported onset. Then, on the chosen setting,
    the onset look-back (`onset_lookbacks_s`): it moves reported onsets only, never what
    is reported or when, so it is tuned last and alone; so is rise dating (`onset_rises`,
    pairs of rise threshold and reach in seconds), after it, touch dating (`onset_touches_s`,
    reaches in seconds, each with the levels `onset_touch_thresholds`) after that, and the
    onset advance (`onset_advances_s`, seconds) last. `class_on_thresholds` offers more
    on-thresholds to one class only (the alarm above 0.99: a change that cannot touch
    cries and glass, model card, rule 2's fifth-round clause); `class_onset_touch_thresholds`
    gives one class its own touch levels."""
    def rank(single: list[np.ndarray], c: str, cand: DecisionParams) -> tuple[float, ...]:
        return _tuning_rank(single, dev, c, cand, fa_budget, fa_cost, max_latency_s, max_fa_per_hour)

    tuned = dict(base)
    grid = set(on_thresholds) | set(HIGH_ON_THRESHOLDS)
    for ci, c in enumerate(CLASSES):
        if c not in classes:
            continue
        single = [s[:, ci : ci + 1] for s in scores]
        best: tuple[tuple[float, ...], DecisionParams] | None = None
        for on in sorted(grid | set((class_on_thresholds or {}).get(c, ()))):
            for dur_scale, smooth_scale, (k_scale, n_scale) in itertools.product(
                dur_scales, (1, 2), onset_windows
            ):
                b = base[c]
                cand = replace(
                    at_on_threshold(b, on),
                    min_duration_s=round(
                        min(b.min_duration_s * dur_scale, (max_min_duration_s or {}).get(c, 1e9)),
                        3,
                    ),
                    smoothing_frames=b.smoothing_frames * smooth_scale,
                    onset_k=b.onset_k * k_scale,
                    onset_n=max(b.onset_n * n_scale, b.onset_k * k_scale),
                )
                key = rank(single, c, cand)
                if best is None or key > best[0]:
                    best = (key, cand)
        assert best is not None
        best = _onset_dating_stages(
            partial(rank, single, c), best, onset_lookbacks_s, onset_rises, onset_touches_s, onset_advances_s,
            (class_onset_touch_thresholds or {}).get(c, onset_touch_thresholds),
        )
        tuned[c] = best[1]
    return tuned


def _tuning_rank(
    single: list[np.ndarray],
    dev: Sequence[D.DevItem],
    c: str,
    cand: DecisionParams,
    fa_budget: float | None,
    fa_cost: float,
    max_latency_s: Mapping[str, float] | None,
    max_fa_per_hour: Mapping[str, float] | None,
) -> tuple[float, ...]:
    """The key `tune_decisions` ranks one class's settings by (higher is better)."""
    pc = class_metrics(single, dev, c, cand)
    latency = pc["median_latency_s"]
    bound = (max_latency_s or {}).get(c)
    ceiling = (max_fa_per_hour or {}).get(c)
    return (
        0.0 if bound is not None and latency is not None and latency > bound else 1.0,
        0.0 if ceiling is not None and pc["fa_per_hour"] > ceiling else 1.0,
        # Within budget only counts for settings that find something:
        # a threshold nothing reaches has no false alarms, and no use.
        1.0 if fa_budget is not None and pc["fa_per_hour"] <= fa_budget and pc["tp"] > 0 else 0.0,
        pc["f1"] - fa_cost * pc["fa_per_hour"],
    )


def _onset_dating_stages(
    rank: Callable[[DecisionParams], tuple[float, ...]],
    best: tuple[tuple[float, ...], DecisionParams],
    onset_lookbacks_s: Sequence[float],
    onset_rises: Sequence[tuple[float, float]],
    onset_touches_s: Sequence[float],
    onset_advances_s: Sequence[float] = (0.0,),
    onset_touch_thresholds: Sequence[float] = (1.0,),
) -> tuple[tuple[float, ...], DecisionParams]:
    """From `best` (its key and setting), the onset-only parameters in turn: the look-back,
    then rise dating, then touch dating (each reach with each level), then the onset
    advance, each kept only where it ranks strictly higher."""
    for lookback in onset_lookbacks_s:
        cand = replace(best[1], onset_lookback_s=lookback)
        key = rank(cand)
        if key > best[0]:
            best = (key, cand)
    chosen = best[1]
    for threshold, reach_s in onset_rises:
        cand = replace(chosen, onset_rise_threshold=threshold, onset_rise_s=reach_s)
        key = rank(cand)
        if key > best[0]:
            best = (key, cand)
    chosen = best[1]
    for touch_s, level in itertools.product(onset_touches_s, onset_touch_thresholds):
        cand = replace(chosen, onset_touch_s=touch_s, onset_touch_threshold=level)
        key = rank(cand)
        if key > best[0]:
            best = (key, cand)
    chosen = best[1]
    for advance_s in onset_advances_s:
        cand = replace(chosen, onset_advance_s=advance_s)
        key = rank(cand)
        if key > best[0]:
            best = (key, cand)
    return best


def retune_onset_dating(
    scores: Sequence[np.ndarray], dev: Sequence[D.DevItem], decisions: Mapping[str, DecisionParams], cfg: Any,
    classes: Sequence[str] = CLASSES,
) -> dict[str, DecisionParams]:
    """`decisions` with only their onset-only parameters (look-back, rise and touch dating)
    tuned again, on `scores`/`dev`, by the recipe's grids and ranking (a
    `models.config.TrainConfig`). Those parameters move reported onsets and nothing else:
    what is reported, and when, cannot change, so no false alarm can be added, and they can
    be tuned on more scenes than the rest (the selection's scenes held no cry whose onset
    touch dating would move; model card, twenty-seventh round). The search starts from each
    class's setting in `decisions` and leaves it only for a strictly better rank."""
    e = cfg.eval
    out = dict(decisions)
    for ci, c in enumerate(CLASSES):
        if c not in classes:
            continue
        rank = partial(
            _tuning_rank, [s[:, ci : ci + 1] for s in scores], dev, c, fa_budget=e.fa_per_hour_budget,
            fa_cost=e.fa_cost, max_latency_s=e.max_latency_s, max_fa_per_hour=e.max_fa_per_hour,
        )
        start = decisions[c]
        out[c] = _onset_dating_stages(
            rank, (rank(start), start), e.onset_lookbacks_s, e.onset_rises, e.onset_touches_s,
            e.onset_advances_s, e.class_onset_touch_thresholds.get(c, e.onset_touch_thresholds),
        )[1]
    return out


# --------------------------------------------------------------------------- training


def tune_for_recipe(
    scores: Sequence[np.ndarray], dev: Sequence[D.DevItem], cfg: Any, classes: Sequence[str] = CLASSES
) -> dict[str, DecisionParams]:
    """`tune_decisions` with a training recipe's `eval:` settings (a `models.config.TrainConfig`),
    for `classes` (the others keep the recipe's decisions)."""
    e = cfg.eval
    return tune_decisions(
        scores, dev, cfg.decision, e.on_thresholds, e.fa_per_hour_budget,
        e.min_duration_scales, e.max_min_duration_s, e.max_latency_s, e.onset_windows,
        e.fa_cost, e.onset_lookbacks_s, e.max_fa_per_hour, e.class_on_thresholds,
        e.onset_rises, classes, e.onset_touches_s, e.onset_advances_s, e.onset_touch_thresholds,
        e.class_onset_touch_thresholds,
    )


def recipe_selection(
    scores: Sequence[np.ndarray],
    dev: Sequence[D.DevItem],
    cfg: Any,
    draws: Sequence[tuple[int, Sequence[np.ndarray], Sequence[D.DevItem]]] = (),
    scene_items: int | None = None,
) -> tuple[float, dict[str, Any]]:
    """A run's early-stopping figure under its recipe's `eval.select` (a
    `models.config.TrainConfig`), and what it was made of.

    "terms": `selection_f1`, the quick stand-in. "tuned": the export's own figure for the
    classes the network will serve (`eval.select_classes`): their decisions tuned on the
    selection's scenes as `tune_for_recipe` tunes them, then per class tuned F1 less
    `SHIPPING_FA_COST` per false alarm an hour, averaged. For a member that serves one class
    in the shipped shape (the cry member: per-class member weights give it the cry row
    alone), this ranks networks as rule 4 on the selection's scenes ranks the joined model,
    cross-triggers aside: the other members' classes and decisions do not move. The
    twenty-first and twenty-second rounds found that the quick terms rank close networks
    otherwise (model card).

    `draws` (`eval.select_draws`: scene seed, scores, scenes of fresh draws of the dev
    scenes): the same decisions are scored on each draw too, with the items every draw shares
    (`dev[scene_items:]`, the quiet rooms and Debian dev negatives), and the figure is the
    mean over the selection's scenes and the draws, as rule 5 scores fresh draws."""
    e = cfg.eval
    if e.select == "terms":
        return selection_f1(scores, dev, cfg.decision, fa_cost=e.fa_cost), {}
    if bool(draws) != bool(e.select_draws) or (draws and scene_items is None):
        raise ValueError(f"eval.select_draws {list(e.select_draws)}: the run must score those draws "
                         f"(got {len(draws)} draws, scene_items {scene_items})")
    classes = tuple(e.select_classes)
    decisions = tune_for_recipe(scores, dev, cfg, classes)
    n = len(dev) if scene_items is None else scene_items
    sets: dict[str, tuple[Sequence[np.ndarray], Sequence[D.DevItem]]] = {"selection": (scores[:n], dev[:n])}
    sets.update({f"draw {seed}": (draw_scores, items) for seed, draw_scores, items in draws})
    shared_scores, shared_items = scores[n:], dev[n:]
    per_class: dict[str, dict[str, Any]] = {name: {} for name in sets}
    for c in classes:
        # Each served class from its own score column, as the tuning ranked it.
        for name, metrics in class_metrics_of_sets(sets, shared_scores, shared_items, c, decisions[c]).items():
            per_class[name][c] = metrics
    figures = {
        name: float(np.mean([m[c]["f1"] - SHIPPING_FA_COST * m[c]["fa_per_hour"] for c in classes]))
        for name, m in per_class.items()
    }
    made_of: dict[str, Any] = {
        "tuned_f1": {c: round(per_class["selection"][c]["f1"], 4) for c in classes},
        "tuned_fa_per_hour": {c: round(per_class["selection"][c]["fa_per_hour"], 3) for c in classes},
    }
    if draws:
        made_of["figure_by_set"] = {name: round(f, 4) for name, f in figures.items()}
        made_of["tuned_f1_by_set"] = {name: {c: round(m[c]["f1"], 4) for c in classes}
                                      for name, m in per_class.items()}
        made_of["tuned_fa_per_hour_by_set"] = {name: {c: round(m[c]["fa_per_hour"], 3) for c in classes}
                                               for name, m in per_class.items()}
    return float(np.mean(list(figures.values()))), made_of


#: The shipping rule (model card, "The shipping rule"), fixed on 2026-12-01 before the runs
#: it judges. Dev holds 104 cry and 16 glass recordings but only 3 real alarms, so the score
#: ranks by the classes dev can measure and the alarm is a floor instead of a third of it.
SCORED_CLASSES = ("baby_cry", "glass_break")
#: Rule 3 (ninth round, 2026-12-02, settled before the candidates it judges): one false alarm
#: an hour of a class costs 0.05 of its F1. Rule 2's 0.01 valued the whole way from 2.3.0's
#: 5.7 false cry alarms an hour to the issue's 0.5 at 0.05 of score, less than one seed's
#: spread, so the score could not see progress on the issue's second target.
SHIPPING_FA_COST = 0.05
#: Rule 2's weight, still reported beside the score (`score_rule2`) so earlier rounds compare.
RULE2_FA_COST = 0.01
#: Rule 4 (tenth round, 2026-12-02, settled before the candidates it judges): the false
#: smoke alarms an hour cost the score what a false cry or glass alarm an hour costs (0.05 /
#: 2 of the mean), so every false alarm counts alike, as the issue's "all classes together"
#: does. The alarm's F1 stays out (3 real dev recordings); its false alarms are measured on
#: the same hours as the others'. `score_rule3` reports rule 3 (false alarms of the scored
#: classes only) beside it.
FA_CHARGED_CLASSES = ("baby_cry", "glass_break", "smoke_alarm")
#: Alarm floor: procedural alarms found on time in dev scenes, real alarm events found in
#: dev scenes, false smoke alarms per hour on dev negatives.
ALARM_FLOOR = {"procedural_recall": 0.85, "real_recall": 0.67, "fa_per_hour": 1.0}
#: A challenger replaces the shipped model only when its score is higher by more than this
#: or than the measured run-to-run spread (the range of the score of one recipe's seeds'
#: in-run best checkpoints), whichever is larger: `ships_over(..., margin=...)`.
SHIPPING_MARGIN = 0.03


def _scored(
    per_class: Mapping[str, Mapping[str, Any]],
    fa_cost: float = SHIPPING_FA_COST,
    charged: Sequence[str] = FA_CHARGED_CLASSES,
) -> float:
    """The shipping score's figure: the mean F1 of the scored classes less `fa_cost` /
    len(SCORED_CLASSES) per false alarm an hour of each class in `charged` (rule 4; rules 2
    and 3 charged the scored classes only)."""
    mean_f1 = float(np.mean([per_class[c]["f1"] for c in SCORED_CLASSES]))
    false_alarms = sum(per_class[c]["fa_per_hour"] for c in charged)
    return mean_f1 - fa_cost / len(SCORED_CLASSES) * false_alarms


def shipping_score(report: Mapping[str, Any]) -> dict[str, Any]:
    """The shipping rule on a dev report (`harken export --data ... --negatives ...`, the
    `.dev.json`): the mean over cries and glass of tuned dev-scene F1 less 0.025 per false
    alarm an hour of any class (rule 4; `score_rule3`: cry and glass false alarms only;
    `score_rule2`: those at 0.005), and whether the smoke alarm clears its floor."""
    per_class = report["dev_tuned"]["per_class"]
    score = _scored(per_class)
    alarm = per_class["smoke_alarm"]
    procedural = report.get("procedural_alarms")
    failed = []
    if procedural is None:
        failed.append("no procedural-alarm line (export with --negatives)")
    elif procedural["recall"] < ALARM_FLOOR["procedural_recall"]:
        failed.append(f"procedural alarms on time {procedural['recall']:.2f} < {ALARM_FLOOR['procedural_recall']}")
    if alarm["recall"] < ALARM_FLOOR["real_recall"]:
        failed.append(f"real alarm events found {alarm['recall']:.2f} < {ALARM_FLOOR['real_recall']}")
    if alarm["fa_per_hour"] > ALARM_FLOOR["fa_per_hour"]:
        failed.append(f"false smoke alarms {alarm['fa_per_hour']:.2f}/h > {ALARM_FLOOR['fa_per_hour']}")
    return {
        "score": round(score, 4),
        "score_rule3": round(_scored(per_class, SHIPPING_FA_COST, SCORED_CLASSES), 4),
        "score_rule2": round(_scored(per_class, RULE2_FA_COST, SCORED_CLASSES), 4),
        "alarm_floor_met": not failed,
        "alarm_floor_failed": failed,
    }


#: Rule 5 (sixteenth round, 2026-12-03, settled before the candidates it judges): the
#: score is the mean of rule 4's figure over these fresh draws of the dev scenes (the same
#: recordings in other beds, lead-ins and levels), under decisions tuned on the selection's
#: scenes. Fifteen rounds chose decisions and candidates on those, which made them read
#: optimistic (model card, "Found with the probe").
SCENE_DRAW_SEEDS = (11, 12, 13, 14, 15)


def tuning_scenes(
    base_scores: Sequence[np.ndarray],
    base_items: Sequence[D.DevItem],
    draws: Sequence[tuple[int, Sequence[np.ndarray], Sequence[D.DevItem]]],
    shared_scores: Sequence[np.ndarray],
    shared_items: Sequence[D.DevItem],
    shared_each_draw: bool = False,
) -> tuple[list[np.ndarray], list[D.DevItem]]:
    """The scores and items the decisions are tuned on: the base set (the selection's scenes,
    which already hold the shared items) and each draw's scenes (`--tune-draws`). By default
    the shared items (the quiet rooms and Debian dev negatives) are counted once: with k draws
    their false alarms weigh 1 / (1 + k) as much in the pooled F1's precision as rule 5 (which
    scores each draw with its own count of them) gives them, and less in the pooled false
    alarms an hour, whose hours grow with each draw's own negative streams. With
    `shared_each_draw` each draw brings its own copy, and the pooled figures weigh them as
    rule 5 does (fortieth round)."""
    scores, items = list(base_scores), list(base_items)
    for _, draw_scores, draw_items in draws:
        scores += draw_scores
        items += draw_items
        if shared_each_draw:
            scores += shared_scores
            items += shared_items
    return scores, items


def scene_draws_score(
    draws: Sequence[tuple[int, Sequence[np.ndarray], Sequence[D.DevItem]]],
    shared_scores: Sequence[np.ndarray],
    shared_items: Sequence[D.DevItem],
    decisions: Mapping[str, DecisionParams],
) -> dict[str, Any]:
    """Rule 5: each draw (scene seed, its scenes' scores, its scenes) scored together with
    the items every draw shares (the quiet rooms and Debian dev negatives, where most false
    alarms are counted) under fixed `decisions`; the score is the mean of rule 4's figure
    over the draws. Per draw: its figure, F1 and false alarms an hour per class, events found."""
    if not draws:
        raise ValueError("rule 5 needs at least one draw of dev scenes")
    rows = []
    for seed, scores, items in draws:
        every_item = [*items, *shared_items]
        per_class = event_metrics(every_item, run_decisions([*scores, *shared_scores], decisions))["per_class"]
        rows.append({
            "seed": seed,
            "score": round(_scored(per_class), 4),
            "f1": {c: round(m["f1"], 4) for c, m in per_class.items()},
            "fa_per_hour": {c: round(m["fa_per_hour"], 3) for c, m in per_class.items()},
            "found": {c: m["tp"] for c, m in per_class.items()},
            "events": {c: m["tp"] + m["fn"] for c, m in per_class.items()},
        })
    figures = [r["score"] for r in rows]
    alarms_found, alarm_events = _real_alarms_over(rows)
    failed = draws_alarm_floor_failed(rows)
    return {
        "score_draws": round(float(np.mean(figures)), 4),
        "draw_range": round(max(figures) - min(figures), 4),
        "draws": rows,
        "draws_real_alarms_found": f"{alarms_found}/{alarm_events}",
        "draws_alarm_floor_met": not failed,
        "draws_alarm_floor_failed": failed,
    }


def draws_alarm_floor_failed(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The alarm floor read on fresh draws (seventeenth round, for candidates that move the
    alarm): the real alarm events found over all draws at least `ALARM_FLOOR["real_recall"]`
    of them, and no draw over `ALARM_FLOOR["fa_per_hour"]` false smoke alarms an hour.
    Draws without a real alarm event cannot fail the first line. What failed, or []."""
    failed = []
    found, events = _real_alarms_over(rows)
    if events and found / events < ALARM_FLOOR["real_recall"]:
        failed.append(f"real alarm events found over the draws {found}/{events} < {ALARM_FLOOR['real_recall']}")
    for r in rows:
        if r["fa_per_hour"]["smoke_alarm"] > ALARM_FLOOR["fa_per_hour"]:
            failed.append(f"draw {r['seed']}: false smoke alarms {r['fa_per_hour']['smoke_alarm']:.2f}/h "
                          f"> {ALARM_FLOOR['fa_per_hour']}")
    return failed


def _real_alarms_over(rows: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """Real alarm events found, and there, summed over rule 5's draws."""
    return sum(r["found"]["smoke_alarm"] for r in rows), sum(r["events"]["smoke_alarm"] for r in rows)


def dev_fold(item: D.DevItem, folds: int) -> int:
    """The cross-validation fold of a dev item, by the recording it was made from: the
    scenes of one dev recording (several EBRs, repetitions) always fall in one fold."""
    return zlib.crc32((item.source_clip or item.name).encode()) % folds


def cross_validated_score(
    scores: Sequence[np.ndarray],
    dev: Sequence[D.DevItem],
    tune: Callable[[Sequence[np.ndarray], Sequence[D.DevItem]], Mapping[str, DecisionParams]],
    folds: int = 2,
    procedural: tuple[Sequence[np.ndarray], Sequence[D.DevItem]] | None = None,
) -> dict[str, Any]:
    """The shipping score with decisions tuned (`tune`) on all folds of dev but one and
    scored on the one held out, averaged over folds. Tuning and scoring on the same dev
    rewards any richer tuning whether or not it carries to new audio; held-out folds do
    not, so this is what judges a change of the decision tuning itself (model card, rule 2).
    Also the alarm floor per held-out fold (`floor_folds`, what failed; rule 2's clause for
    alarm-only tuning changes): its real alarms and false smoke alarms, and the procedural
    alarm scenes (`procedural`, scores and items; never tuned on) under that fold's
    decisions. A fold without a real alarm event cannot fail the real-alarm line."""
    fold_of = [dev_fold(item, folds) for item in dev]
    per_fold, floors = [], []
    for k in range(folds):
        held = [i for i, f in enumerate(fold_of) if f == k]
        rest = [i for i, f in enumerate(fold_of) if f != k]
        decisions = tune([scores[i] for i in rest], [dev[i] for i in rest])
        metrics = evaluate([scores[i] for i in held], [dev[i] for i in held], decisions)
        per_fold.append(round(_scored(metrics["per_class"]), 4))
        alarm = dict(metrics["per_class"]["smoke_alarm"])
        if alarm["tp"] + alarm["fn"] == 0:
            alarm["recall"] = 1.0  # nothing to find in this half: the line cannot be judged
        line = None
        if procedural is not None:
            line = evaluate(list(procedural[0]), list(procedural[1]), decisions)["per_class"]["smoke_alarm"]
        report = {"dev_tuned": {"per_class": {**metrics["per_class"], "smoke_alarm": alarm}},
                  "procedural_alarms": line}
        floors.append(shipping_score(report)["alarm_floor_failed"])
    return {"score_cv": round(float(np.mean(per_fold)), 4), "folds": per_fold, "floor_folds": floors}


def ships_over(challenger: Mapping[str, Any], shipped: Mapping[str, Any], margin: float = SHIPPING_MARGIN) -> bool:
    """Whether a challenger's `shipping_score` replaces the shipped model's."""
    return bool(challenger["alarm_floor_met"]) and challenger["score"] > shipped["score"] + margin
