"""How soon after a clip's labelled onset does a model's score rise? (model card, fourteenth round)

Training labels and dev ground truth date an isolated event clip by its energy-based
active span (`models.scenes.active_span`). If a clip opens with breathing or fussing that
the span counts and the network does not, the onset loss asks for a score the network
cannot give, and the dev scenes count a late report. This probe separates the label from
the mixing: each target clip of one class is scored alone, after `pre_s` seconds of quiet
noise (so the network's context is not the stream start), and the delay from the span's
onset to the first frame at or above the threshold is reported per split, with how loud
the span's first half second is against the span's loud frames.

    python -m models.onset_probe --model models/members/STE2.onnx --data ../shared/data \
        [--class baby_cry] [--threshold 0.99] [--split dev] [--pre-s 3.0]

`--pre-s 0` plays each clip as a stream's first second, as `harken eval` plays dev clips:
the difference to the default says how much of a late rise is the stream's start.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.scenes import ACTIVITY_HOP_S, active_span, frame_levels_dbfs

COLLAR_S = 0.5  # the event metrics' onset collar


@dataclass(frozen=True)
class ClipOnset:
    """One clip's probe: where its span starts, how late the score rises, how loud it opens."""

    split: str
    path: str
    onset_s: float
    delay_s: float  # inf when the score never reaches the threshold after the onset
    head_db: float  # the span's first 0.5 s against its 90th-percentile level (dB)


def played_alone(audio: np.ndarray, rng: np.random.Generator, pre_s: float, post_s: float = 0.0,
                 noise_dbfs: float = -60.0) -> np.ndarray:
    """`audio` after `pre_s` (and before `post_s`) seconds of quiet noise at `noise_dbfs`,
    the noise running under the clip too: the network's context is not the stream start."""
    from models.data import SAMPLE_RATE

    n_pre, n_post = int(pre_s * SAMPLE_RATE), int(post_s * SAMPLE_RATE)
    quiet = rng.standard_normal(n_pre + audio.shape[0] + n_post) * 10 ** (noise_dbfs / 20)
    padded = np.concatenate([np.zeros(n_pre), audio, np.zeros(n_post)])
    return (quiet + padded).astype(np.float32)


def rise_delay(scores: np.ndarray, frame_times_s: np.ndarray, onset_s: float, threshold: float) -> float:
    """Seconds from `onset_s` to the first frame at or after it whose score reaches
    `threshold`; inf when none does."""
    after = np.flatnonzero((frame_times_s >= onset_s) & (scores >= threshold))
    return float(frame_times_s[after[0]] - onset_s) if after.size else float("inf")


def head_level_db(audio: np.ndarray, onset_s: float, offset_s: float, head_s: float = 0.5) -> float:
    """Mean level of the span's first `head_s` against its 90th-percentile level (dB): a
    clip that opens quietly (a breath before the cry) reads well below 0."""
    levels = frame_levels_dbfs(audio)
    times = np.arange(levels.shape[0]) * ACTIVITY_HOP_S
    span = levels[(times >= onset_s) & (times < offset_s)]
    head = levels[(times >= onset_s) & (times < onset_s + head_s)]
    if span.size == 0 or head.size == 0:
        return 0.0
    return float(np.mean(head) - np.percentile(span, 90))


def summarise(probes: Sequence[ClipOnset]) -> dict[str, float]:
    """Shares of clips by delay (on time within the collar, 0.5-2 s, later, never) and the
    median opening level of the on-time and the late clips."""
    if not probes:
        return {"clips": 0}
    delay = np.array([p.delay_s for p in probes])
    head = np.array([p.head_db for p in probes])
    late = np.isfinite(delay) & (delay > COLLAR_S)
    on_time = delay <= COLLAR_S
    return {
        "clips": len(probes),
        "onset_at_start": round(float(np.mean([p.onset_s < 0.05 for p in probes])), 3),
        "on_time": round(float(np.mean(on_time)), 3),
        "late_0.5_2s": round(float(np.mean(late & (delay <= 2.0))), 3),
        "late_over_2s": round(float(np.mean(late & (delay > 2.0))), 3),
        "never": round(float(np.mean(~np.isfinite(delay))), 3),
        "head_db_on_time": round(float(np.median(head[on_time])), 1) if on_time.any() else float("nan"),
        "head_db_late": round(float(np.median(head[late])), 1) if late.any() else float("nan"),
        "opens_quietly": round(float(np.mean(head < -10.0)), 3),
    }


def probe_clips(model: Path, data_dir: Path, class_name: str, threshold: float,
                pre_s: float = 3.0, noise_dbfs: float = -60.0, seed: int = 0,
                split: str | None = None) -> list[ClipOnset]:
    """Score every clip of `class_name` in the data set (in `split`, or all splits) with the model."""
    from models.data import load_audio
    from models.manifest import read_manifest
    from service.audio.features import FeatureParams, LogMel
    from service.detector import Detector

    detector = Detector.load(model)
    column = detector.class_names.index(class_name)
    params = FeatureParams()
    logmel = LogMel(params)
    rng = np.random.default_rng(seed)
    out: list[ClipOnset] = []
    for row in read_manifest(data_dir, classes=[class_name]):
        if split is not None and row.split != split:
            continue
        audio = load_audio(row.file)
        span = active_span(audio)
        if span is None:
            continue
        signal = played_alone(audio, rng, pre_s, noise_dbfs=noise_dbfs)
        scores = detector.scores(logmel.frames(signal))[:, column]
        times = np.asarray(params.frame_center_s(np.arange(scores.shape[0])))
        out.append(ClipOnset(
            split=row.split, path=row.path, onset_s=span.onset_s,
            delay_s=rise_delay(scores, times, pre_s + span.onset_s, threshold),
            head_db=head_level_db(audio, span.onset_s, span.offset_s),
        ))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.onset_probe", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a harken .onnx (a member or a joined model)")
    parser.add_argument("--data", type=Path, required=True, help="data folder (MANIFEST.csv)")
    parser.add_argument("--class", dest="class_name", default="baby_cry")
    parser.add_argument("--threshold", type=float, default=0.99, help="the score a frame must reach")
    parser.add_argument("--split", choices=("train", "dev"), help="one split only (default both)")
    parser.add_argument("--pre-s", type=float, default=3.0,
                        help="seconds of quiet noise before each clip (0: the clip opens the stream)")
    args = parser.parse_args(argv)
    if args.pre_s < 0:
        parser.error(f"--pre-s must be 0 or more seconds, got {args.pre_s}")
    probes = probe_clips(args.model, args.data, args.class_name, args.threshold, pre_s=args.pre_s,
                         split=args.split)
    for split in ("train", "dev"):
        if args.split in (None, split):
            print(split, summarise([p for p in probes if p.split == split]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
