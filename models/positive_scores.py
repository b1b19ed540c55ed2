"""How sure is each network of a class's events, before any threshold? (model card,
thirty-fifth round)

`models.negative_scores` reads the negative side: how often a network scores a class on
negatives. This reads the positive side: for every event of one class, the highest score
the network gives it in its opening (from the labelled onset to `opening_s` after it, the
part an on-time report needs) and over the whole event, with the clip played alone (after
quiet noise, as `models.onset_probe` plays it) and in the dev scenes (the clip in dev
negatives at -3, +3 and +9 dB, `models.dev_misses`' scenes). A slot's tuning picks a
threshold where the events' peaks and the negatives' scores part; a member whose opening
peaks sit under 0.99 forces the threshold down.

    python -m models.positive_scores --model models/members/STG7.onnx \
        --model models/members/STGD9.onnx --data ../shared/data [--class glass_break] \
        [--split dev] [--scene-seed 11] [--opening-s 1.0]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.data import DevItem

LEVELS = (0.5, 0.9, 0.95, 0.99, 0.995, 0.998)


@dataclass(frozen=True)
class EventPeak:
    """One event's highest scores: in its opening and over the whole event."""

    clip: str
    setting: str  # "alone", or the scene's EBR tag ("-3", "+3", "+9")
    opening: float
    whole: float


def event_peaks(item: DevItem, scores: np.ndarray, class_name: str, opening_s: float) -> list[EventPeak]:
    """The peaks of each true `class_name` event in one item (`scores`: that class's frame
    scores). An event's frames are those whose centres lie in it; its opening's are those
    from its onset to `opening_s` later, past the offset of a shorter event (a report is on
    time when the score rises in that window, wherever the label ends)."""
    from models.dev_misses import setting_of
    from service.audio.features import FeatureParams

    if scores.ndim != 1:
        raise ValueError(f"one class's frame scores expected, got shape {scores.shape}")
    times = np.asarray(FeatureParams().frame_center_s(np.arange(scores.shape[0])))
    setting = setting_of(item)
    out = []
    for name, onset, offset in item.truth:
        if name != class_name:
            continue
        whole = scores[(times >= onset) & (times <= offset)]
        opening = scores[(times >= onset) & (times <= onset + opening_s)]
        if whole.size == 0:
            continue
        out.append(EventPeak(item.source_clip, setting, float(opening.max() if opening.size else 0.0),
                             float(whole.max())))
    return out


def summarise(peaks: Sequence[EventPeak], levels: Sequence[float] = LEVELS) -> dict[str, object]:
    """How many events' opening peak reaches each level, and the median and the lowest
    tenth of the opening and whole-event peaks."""
    if not peaks:
        return {"events": 0}
    opening = np.array([p.opening for p in peaks])
    whole = np.array([p.whole for p in peaks])
    return {
        "events": len(peaks),
        "opening_at_or_above": {f"{level:g}": int(np.sum(opening >= level)) for level in levels},
        "opening_median": round(float(np.median(opening)), 4),
        "opening_p10": round(float(np.percentile(opening, 10)), 4),
        "whole_median": round(float(np.median(whole)), 4),
        "whole_p10": round(float(np.percentile(whole, 10)), 4),
    }


def settings_of(peaks: Sequence[EventPeak]) -> list[str]:
    """The settings in a fixed order: alone first, then the EBRs from the quietest event up."""
    found = {p.setting for p in peaks}
    ebrs = sorted((s for s in found if s != "alone"), key=float)
    return (["alone"] if "alone" in found else []) + ebrs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.positive_scores", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, action="append", required=True, help="a harken .onnx (repeat)")
    parser.add_argument("--data", type=Path, required=True, help="data folder (MANIFEST.csv)")
    parser.add_argument("--class", dest="class_name", default="glass_break")
    parser.add_argument("--split", choices=("train", "dev"), default="dev",
                        help="whose clips (the scenes are built from dev only; train reads them alone)")
    parser.add_argument("--scene-seed", type=int, default=11, help="the dev scenes' draw (rule 5 reads 11-15)")
    parser.add_argument("--opening-s", type=float, default=1.0,
                        help="seconds after an onset that count as its opening")
    parser.add_argument("--config", type=Path, default=Path("models/configs/live-long-small-rule3.yaml"),
                        help="the recipe whose dev scenes to build (data seed, repetitions, licences)")
    args = parser.parse_args(argv)
    if args.opening_s <= 0:
        parser.error(f"--opening-s must be positive, got {args.opening_s}")
    from models.config import load_config
    from models.data import ClipBank, build_dev, read_clips, select
    from models.dev_misses import alone_items
    from service.audio.features import FeatureParams
    from service.detector import Detector

    models = [Detector.load(path) for path in args.model]
    for path, model in zip(args.model, models, strict=True):
        if args.class_name not in model.class_names:
            parser.error(f"{path}: no class {args.class_name!r} (it has {', '.join(model.class_names)})")
    cfg = load_config(args.config)
    bank = ClipBank(select(read_clips(args.data), args.split, cfg.data.licences))
    items = alone_items(bank, args.class_name)
    if args.split == "dev":
        items += [it for it in build_dev(bank, seed=args.scene_seed, params=FeatureParams(),
                                         reps=dict(cfg.eval.dev_reps))
                  if not it.negative_only and any(name == args.class_name for name, _, _ in it.truth)]
    print(f"{args.class_name} events ({args.split}): how many reach each score in their first "
          f"{args.opening_s:g} s (" + " / ".join(f"{level:g}" for level in LEVELS) + "), medians and lowest tenths")
    for path, model in zip(args.model, models, strict=True):
        column = model.class_names.index(args.class_name)
        peaks = [peak for item in items
                 for peak in event_peaks(item, model.scores(item.features)[:, column], args.class_name, args.opening_s)]
        print(path.name)
        for setting in settings_of(peaks):
            s = summarise([p for p in peaks if p.setting == setting])
            reached = " / ".join(str(n) for n in s["opening_at_or_above"].values())  # type: ignore[union-attr]
            print(f"  {setting:>6} {s['events']:>4} events  opening {reached:<24} median {s['opening_median']:.4f}"
                  f"  p10 {s['opening_p10']:.4f}   whole median {s['whole_median']:.4f}  p10 {s['whole_p10']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
