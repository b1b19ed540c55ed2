"""How sure is each network of a class on the negatives, kind by kind? (model card,
thirty-fourth round)

False alarms an hour compare operating points: a member averaged into a slot is tuned with
its partner, and two members' thresholds differ. This compares the networks' scores
themselves: for each model and each kind of negative (music, speech, game effects,
ambience), the share of frames whose score for one class reaches each of a few levels.

    python -m models.negative_scores --model models/members/STG7.onnx \
        --model models/members/STGD9.onnx --negatives NEG [--split train] \
        [--class glass_break] [--minutes-per-kind 30] [--cache runs/cache] \
        [--procedural-minutes 10]

`--procedural-minutes` adds a row per kind of procedural game-like effect
(`models.synth.effect`, fifty-second round): does a network already score them low, or
would laying them into training beds show it something new?
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models import synth
from models.data import SAMPLE_RATE, _active_rms
from models.negatives import NegativePool

LEVELS = (0.5, 0.9, 0.95, 0.99)


def share_at_or_above(scores: np.ndarray, levels: Sequence[float] = LEVELS) -> list[float]:
    """The share of `scores` (one class, one value per frame) at or above each level."""
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"one class's frame scores expected, got shape {scores.shape}")
    return [float(np.mean(scores >= level)) for level in levels]


def kind_streams(pool: NegativePool, minutes_per_kind: float) -> dict[str, np.ndarray]:
    """Each kind's chunks in the pool's order, back to back, cut at `minutes_per_kind`
    (float32, full scale 1): the same audio for every model read."""
    if minutes_per_kind <= 0:
        raise ValueError(f"--minutes-per-kind must be positive, got {minutes_per_kind}")
    limit = int(minutes_per_kind * 60 * SAMPLE_RATE)
    parts: dict[str, list[np.ndarray]] = {}
    for chunk in pool.chunks:
        pieces = parts.setdefault(chunk.kind, [])
        room = limit - sum(piece.shape[0] for piece in pieces)
        if room > 0:
            end = chunk.start + min(chunk.length, room)
            pieces.append(pool.samples(chunk.start, end))
    return {kind: np.concatenate(pieces) for kind, pieces in sorted(parts.items())}


def procedural_streams(minutes_per_kind: float, seed: int = 0) -> dict[str, np.ndarray]:
    """Per kind of procedural effect, `minutes_per_kind` of them one after another over a
    faint steady floor (-65 dBFS), each at its own level (-40..-10 dBFS, the louder half of
    its 20 ms blocks) with 0.2-1 s between: the same audio for every model read."""
    if minutes_per_kind <= 0:
        raise ValueError(f"--procedural-minutes must be positive, got {minutes_per_kind}")
    rng = np.random.default_rng(seed)
    limit = int(minutes_per_kind * 60 * SAMPLE_RATE)
    out: dict[str, np.ndarray] = {}
    for kind in synth.EFFECT_KINDS:
        stream = rng.standard_normal(limit).astype(np.float32) * np.float32(10 ** (-65 / 20))
        at = 0
        while True:
            sound = synth.effect(kind, rng)
            level = 10 ** (rng.uniform(-40, -10) / 20) / (_active_rms(sound) + 1e-9)
            if at + sound.shape[0] > limit:
                break
            stream[at : at + sound.shape[0]] += sound * np.float32(level)
            at += sound.shape[0] + int(rng.uniform(0.2, 1.0) * SAMPLE_RATE)
        out[f"procedural_{kind}"] = np.clip(stream, -1.0, 1.0)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.negative_scores", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, action="append", required=True, help="a harken .onnx (repeat)")
    parser.add_argument("--negatives", type=Path, required=True, help="built negatives folder (NEGATIVES.csv)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--class", dest="class_name", default="glass_break")
    parser.add_argument("--minutes-per-kind", type=float, default=30.0)
    parser.add_argument("--cache", type=Path, help="where the decoded negatives are cached")
    parser.add_argument("--procedural-minutes", type=float, default=0.0,
                        help="add this many minutes of each kind of procedural game-like effect (0: none)")
    args = parser.parse_args(argv)
    from service.audio.features import FeatureParams, LogMel
    from service.detector import Detector

    models = [Detector.load(path) for path in args.model]
    for path, model in zip(args.model, models, strict=True):
        if args.class_name not in model.class_names:
            parser.error(f"{path}: no class {args.class_name!r} (it has {', '.join(model.class_names)})")
    streams = kind_streams(NegativePool.load(args.negatives, args.split, args.cache), args.minutes_per_kind)
    if args.procedural_minutes:
        streams.update(procedural_streams(args.procedural_minutes))
    features = LogMel(FeatureParams())
    print(f"share of {args.split} negative frames with a {args.class_name} score at or above "
          + " / ".join(f"{level:g}" for level in LEVELS))
    for kind, audio in streams.items():
        frames = features.frames(audio)
        print(f"{kind} ({audio.shape[0] / SAMPLE_RATE / 60:.1f} min, {frames.shape[0]} frames)")
        for path, model in zip(args.model, models, strict=True):
            column = model.scores(frames)[:, model.class_names.index(args.class_name)]
            shares = " / ".join(f"{share:.5f}" for share in share_at_or_above(column))
            print(f"  {path.name:28s} {shares}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
