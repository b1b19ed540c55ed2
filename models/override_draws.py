"""Rule 5 of a model with one decision parameter of one class set by hand, value by value
(model card, twenty-seventh round: touch dating read beside the tuner's choice).

A description, never a choice: rule 5's judges are the draws it reads, so a value picked
from this table would be tuned on them. The model's own contract gives every other
parameter; the selection's scenes are read alongside.

    python -m models.override_draws --model runs/P-270-touch.onnx \
        --config models/configs/live-long-small-rule3-touch.yaml --data ../shared/data \
        --negatives /work/negatives --cache runs/cache --class baby_cry \
        --set onset_touch_s=0,0.5,1,2,3,4
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

from service.decision import DecisionParams


def parse_setting(text: str) -> tuple[str, list[float]]:
    """`NAME=V1,V2,...` for a numeric field of `DecisionParams`; errors name what is wrong."""
    name, sep, values = text.partition("=")
    known = {f.name: f for f in fields(DecisionParams)}
    if not sep or name not in known:
        raise ValueError(f"--set {text!r}: give NAME=V1,V2,... with NAME one of {', '.join(known)}")
    try:
        parsed = [float(v) for v in values.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--set {text!r}: the values must be numbers") from None
    if not parsed:
        raise ValueError(f"--set {text!r}: no value given")
    return name, parsed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.override_draws", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a harken .onnx (its contract's decisions)")
    parser.add_argument("--config", type=Path, required=True, help="the live recipe that made its dev scenes")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--negatives", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--class", dest="class_name", default="baby_cry")
    parser.add_argument("--set", dest="setting", required=True, help="NAME=V1,V2,...")
    parser.add_argument("--draws", type=int, nargs="+", default=None, help="scene draws (default rule 5's)")
    args = parser.parse_args(argv)
    try:
        name, values = parse_setting(args.setting)
    except ValueError as exc:
        parser.error(str(exc))

    from models.config import load_config
    from models.trainer import live_dev_set, scored_scene_draws
    from models.tuning import SCENE_DRAW_SEEDS, event_metrics, run_decisions, scene_draws_score
    from service.detector import Detector

    cfg = load_config(args.config)
    detector = Detector.load(args.model)
    if args.class_name not in detector.class_names:
        parser.error(f"--class {args.class_name!r}: the model's classes are {', '.join(detector.class_names)}")

    def score(features: np.ndarray) -> np.ndarray:
        return detector.scores(np.asarray(features, np.float32))

    dev, info = live_dev_set(cfg, args.data, args.negatives, args.cache)
    scores = [score(item.features) for item in dev]
    shared = slice(info["scene_items"], len(dev))  # quiet rooms and negatives: every draw's
    draws = scored_scene_draws(cfg, args.data, args.draws or SCENE_DRAW_SEEDS, args.cache, score)
    base = dict(detector.contract.decision)
    c = args.class_name
    print(f"| {c} {name} | selection: on time | selection: F1 | rule 5 | {c} F1, draws | on time, draws | "
          f"{c} false alarms an hour, draws |")
    print("|---|---|---|---|---|---|---|")
    for value in values:
        typed = type(getattr(base[c], name))(value)
        decisions = {**base, c: replace(base[c], **{name: typed})}
        sel = event_metrics(dev, run_decisions(scores, decisions))["per_class"][c]
        rule5 = scene_draws_score(draws, scores[shared], dev[shared], decisions)
        rows = rule5["draws"]
        print(f"| {typed} | {sel['tp']} | {sel['f1']:.3f} | {rule5['score_draws']:.4f} | "
              f"{np.mean([r['f1'][c] for r in rows]):.3f} | {sum(r['found'][c] for r in rows)} | "
              f"{np.mean([r['fa_per_hour'][c] for r in rows]):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
