"""How far apart are two models' scores, class by class? (model card, eighteenth round)

A member trained with `opt.train_head_rows` should hold the other classes' scores of the
network it started from. This scores the same recordings with both models (the daemon's
features and ONNX Runtime, one long stream of the clips back to back) and prints, per class,
the largest difference of the score and whether every frame is identical.

    python -m models.held_scores --model runs/S4DP.onnx --model runs/S4DPH-s7.onnx \
        --data ../shared/data [--split dev] [--clips 40] [--clip-s 15]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def score_differences(a: np.ndarray, b: np.ndarray, names: Sequence[str]) -> dict[str, tuple[float, bool]]:
    """Per class (column), the largest |a - b| and whether the two columns are identical."""
    if a.shape != b.shape or a.shape[1] != len(names):
        raise ValueError(f"scores of shapes {a.shape} and {b.shape} for {len(names)} classes")
    return {
        name: (float(np.abs(a[:, i] - b[:, i]).max(initial=0.0)), bool(np.array_equal(a[:, i], b[:, i])))
        for i, name in enumerate(names)
    }


def recordings_stream(data_dir: Path, split: str, clips: int, clip_s: float) -> np.ndarray:
    """The first `clips` recordings of `split` in the manifest, each cut to `clip_s` seconds."""
    from models.data import SAMPLE_RATE, load_audio
    from models.manifest import read_manifest

    rows = read_manifest(data_dir, split=split)[:clips]
    if not rows:
        raise ValueError(f"{data_dir}: no recordings in split {split!r}")
    return np.concatenate([load_audio(row.file)[: int(clip_s * SAMPLE_RATE)] for row in rows])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.held_scores", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, action="append", required=True, help="a harken .onnx (twice)")
    parser.add_argument("--data", type=Path, required=True, help="data folder (MANIFEST.csv)")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--clip-s", type=float, default=15.0)
    args = parser.parse_args(argv)
    if len(args.model) != 2:
        parser.error(f"--model twice (the two models to compare), got {len(args.model)}")
    from service.audio.features import FeatureParams, LogMel
    from service.detector import Detector

    first, second = (Detector.load(path) for path in args.model)
    if first.class_names != second.class_names:
        parser.error(f"the models' classes differ: {first.class_names} and {second.class_names}")
    audio = recordings_stream(args.data, args.split, args.clips, args.clip_s)
    frames = LogMel(FeatureParams()).frames(audio)
    scores = [model.scores(frames) for model in (first, second)]
    print(f"{frames.shape[0]} frames, {audio.shape[0] / 16000 / 60:.1f} min of {args.split} recordings")
    for name, (largest, identical) in score_differences(*scores, first.class_names).items():
        print(f"{name:12s} largest difference {largest:.3g}  identical: {identical}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
