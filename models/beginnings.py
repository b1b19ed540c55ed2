"""Does a sound beginning after quiet look like a target to a model? (model card,
fifty-third round)

Most false cries on the dev negatives are detected in a file's first 1.5 s, and more of
them when the file plays after a quiet room (`harken eval --lead-in-s`): the network fires
on a sound beginning. This counts it without the decision layer in between: over the dev
files without events of `--min-file-s` or more, how many have a score for one class at or
above `--level` in their first `--head-s` seconds, against the share of the later windows
of the same length that do, each file scored as `harken eval` scores it (the daemon's
streaming pipeline), once as a stream of its own and once after `--lead-in-s` of the same
quiet floor `harken eval --lead-in-s` plays.

    python -m models.beginnings --model runs/P-STLH10-R11.onnx --model runs/STLH10.onnx \
        --data ../shared/data --negatives NEG [--split dev] [--class baby_cry] \
        [--level 0.99] [--head-s 2] [--min-file-s 20] [--lead-in-s 3]

A head that reaches the level far more often than a later window does is a beginning the
model takes for the class; a fix should bring the two shares together.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from models.data import SAMPLE_RATE
from models.evaluate import EvalItem, analyse_items, decision_params, manifest_set, negative_items
from service.detector import Detector


@dataclass(frozen=True)
class Reach:
    """How often one model's class score reaches a level at files' heads and later on."""

    files: int
    heads: int  # files whose first head_s reach the level
    windows: int  # later whole windows of head_s, over all files
    windows_reached: int

    @property
    def head_share(self) -> float:
        return self.heads / self.files if self.files else 0.0

    @property
    def window_share(self) -> float:
        return self.windows_reached / self.windows if self.windows else 0.0


def head_and_windows(column: np.ndarray, frames_per_window: int, level: float) -> tuple[bool, int, int]:
    """For one file's scores of one class (one value per frame): whether its first window
    reaches `level`, how many whole later windows it has, and how many of them reach it."""
    if column.ndim != 1:
        raise ValueError(f"one class's frame scores expected, got shape {column.shape}")
    if frames_per_window < 1:
        raise ValueError(f"a window needs at least one frame, got {frames_per_window}")
    head = bool(column[:frames_per_window].max(initial=-np.inf) >= level)
    later = column[frames_per_window:]
    n = later.shape[0] // frames_per_window
    peaks = later[: n * frames_per_window].reshape(n, frames_per_window).max(axis=1) if n else later[:0]
    return head, n, int(np.count_nonzero(peaks >= level))


def reach(columns: Sequence[np.ndarray], frames_per_window: int, level: float) -> Reach:
    """`head_and_windows` summed over files."""
    heads = windows = reached = 0
    for column in columns:
        head, n, hits = head_and_windows(column, frames_per_window, level)
        heads += head
        windows += n
        reached += hits
    return Reach(len(columns), heads, windows, reached)


def _duration_s(item: EvalItem) -> float:
    """The item's length from its header (or its samples): short files are not analysed;
    an unreadable one counts as long, so that the analysis names it."""
    if item.audio is not None:
        return item.audio.shape[0] / SAMPLE_RATE
    try:
        return float(sf.info(str(item.path)).duration)
    except (RuntimeError, sf.LibsndfileError):
        return float("inf")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.beginnings", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, action="append", required=True, help="a harken .onnx (repeat)")
    parser.add_argument("--data", type=Path, required=True, help="folder with MANIFEST.csv")
    parser.add_argument("--negatives", type=Path, help="built negatives folder: its chunks join as files")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--class", dest="class_name", default="baby_cry")
    parser.add_argument("--level", type=float, default=0.99)
    parser.add_argument("--head-s", type=float, default=2.0)
    parser.add_argument("--min-file-s", type=float, default=20.0)
    parser.add_argument("--lead-in-s", type=float, default=3.0, help="the quiet floor's length (0: none)")
    args = parser.parse_args(argv)
    if args.head_s <= 0 or args.min_file_s < 2 * args.head_s:
        parser.error("--head-s must be positive and --min-file-s at least twice it")
    if args.lead_in_s < 0:
        parser.error(f"--lead-in-s must be 0 or more seconds, got {args.lead_in_s}")
    # A clipped file would be named once per model and lead-in by the reader; the count
    # reads scores, and `harken eval` names such files in its own run. The level is put back
    # after, for whatever else runs in this process.
    reader_log = logging.getLogger("service.audio.sources")
    level_before = reader_log.level
    reader_log.setLevel(logging.ERROR)
    try:
        _count(parser, args)
    finally:
        reader_log.setLevel(level_before)
    return 0


def _count(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The table: per model, per lead-in, heads and later windows at the level."""
    evalset = manifest_set(args.data, args.split)
    if args.negatives is not None:
        evalset.items.extend(negative_items(args.negatives, args.split)[0])
    with_events = {ref.file for ref in evalset.references}
    items = [item for item in evalset.items
             if item.file not in with_events and _duration_s(item) >= args.min_file_s]
    leads = sorted({0.0, args.lead_in_s})
    print(f"{args.split} files without events of {args.min_file_s:g} s or more: how many reach a "
          f"{args.class_name} score of {args.level:g} in their first {args.head_s:g} s, against "
          f"the later {args.head_s:g} s windows")
    print(f"{'model':32s} {'lead-in':>7s} {'files':>5s} {'heads':>5s} {'share':>6s} {'windows':>7s} {'share':>7s}")
    for path in args.model:
        detector = Detector.load(path)
        if args.class_name not in detector.class_names:
            parser.error(f"{path}: no class {args.class_name!r} (it has {', '.join(detector.class_names)})")
        c = detector.class_names.index(args.class_name)
        params, margin = decision_params(detector)
        per_window = max(1, round(args.head_s / detector.contract.features.hop_s))
        for lead in leads:
            results, failed = analyse_items(items, detector, params, margin, progress=False,
                                            lead_in_s=lead)
            if failed:
                print(f"  {len(failed)} unreadable files left out (the first: {failed[0]['error']})")
            columns = [r.scores[:, c] for r in results if r.duration_s >= args.min_file_s]
            counted = reach(columns, per_window, args.level)
            print(f"{path.name:32s} {lead:7g} {counted.files:5d} {counted.heads:5d} "
                  f"{counted.head_share:6.1%} {counted.windows:7d} {counted.window_share:7.2%}")


if __name__ == "__main__":
    raise SystemExit(main())
