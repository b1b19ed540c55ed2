"""Where do a class's dev clips begin: by their labels, by their voiced energy, and by a model?
(model card, thirtieth round)

`harken eval` scores each dev target clip against its energy-based active span
(`models.scenes.active_span`: broadband level, first active frame). A clip that opens with
a click or handling noise before the cry gets a label onset the cry does not have, and a
report at the cry's real start counts as late. This check sets each clip's labelled onset
beside where its voiced energy begins (the level of the bands between 300 Hz and 4 kHz
staying near the clip's loud frames) and beside the onset one `harken eval` run reported,
so the late reports can be split into labels that open early and networks that hear late.

    python -m models.label_onsets --report runs/eval-270/report.json --data ../shared/data \
        [--class baby_cry] [--plot late.png] [--plot-clips 14] [--json onsets.json]

`--split train` (instead of `--report`) reads every clip of a split with the label training
gives it, so the openings the onset term asks to be confident can be checked (thirty-first
round).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.onset_probe import COLLAR_S
from service.audio.features import FeatureParams, LogMel, mel_filterbank

VOICED_BAND_HZ = (300.0, 4000.0)  # a cry's fundamental and its strongest harmonics
KINDS = ("on_time", "late", "early", "missed", "unscored")  # unscored: no report read
ONSET_WINDOWS_S = (0.4, 0.24)  # the onset term's window in the recipes (20 frames) and STO9's (12)


@dataclass(frozen=True)
class ClipOnsets:
    """One clip: its labelled onset, its voiced onset, the onset reported (None: not found)."""

    file: str
    label_s: float
    voiced_s: float
    reported_s: float | None
    kind: str  # one of KINDS, by the reported onset against the label and the collar


@functools.lru_cache(maxsize=8)
def _bands_in(params: FeatureParams, band_hz: tuple[float, float]) -> np.ndarray:
    """Which log-mel bands have their centre in `band_hz` (built once, not once per clip)."""
    filters = mel_filterbank(params)
    bin_hz = np.linspace(0.0, params.sample_rate / 2, filters.shape[1])
    centre_hz = bin_hz[np.argmax(filters, axis=1)]
    bands = (centre_hz >= band_hz[0]) & (centre_hz <= band_hz[1])
    if not bands.any():
        raise ValueError(f"no mel band has its centre in {band_hz} Hz")
    return bands


def band_level_db(features: np.ndarray, params: FeatureParams,
                  band_hz: tuple[float, float] = VOICED_BAND_HZ) -> np.ndarray:
    """Per frame, the mean power (dB) of the log-mel bands whose centre lies in `band_hz`."""
    bands = _bands_in(params, band_hz)
    return 10.0 * np.log10(np.mean(np.exp(features[:, bands]), axis=1) + 1e-12)


def voiced_onset_s(features: np.ndarray, params: FeatureParams, *, within_db: float = 12.0,
                   hold_frames: int = 15, need_frames: int = 12) -> float:
    """Where the voiced sound begins: the first frame from which at least `need_frames` of
    the next `hold_frames` are within `within_db` of the clip's 99th-percentile band level.
    A click is too short to hold and a breath too quiet, so neither starts it; a clip with
    no such stretch begins where its loudest stretch does."""
    if not 0 < need_frames <= hold_frames:
        raise ValueError(f"need_frames must be in 1..hold_frames ({hold_frames}), got {need_frames}")
    if features.shape[0] == 0:
        return 0.0
    level = band_level_db(features, params)
    near_peak = (level >= np.percentile(level, 99) - within_db).astype(np.int64)
    # held[i]: how many of frames i .. i + hold_frames - 1 are near the peak
    held = np.convolve(near_peak, np.ones(hold_frames, dtype=np.int64), mode="full")[hold_frames - 1:]
    starts = np.flatnonzero(held >= min(need_frames, features.shape[0]))
    first = int(starts[0]) if starts.size else int(np.argmax(held))
    return float(params.frame_center_s(first))


def onset_kind(label_s: float, reported_s: float | None, collar_s: float = COLLAR_S) -> str:
    """On time within the collar, else late or early; missed when nothing was reported."""
    if reported_s is None:
        return "missed"
    if abs(reported_s - label_s) <= collar_s:
        return "on_time"
    return "late" if reported_s > label_s else "early"


def clip_onsets(report: Mapping[str, Any], data_dir: Path, class_name: str = "baby_cry") -> list[ClipOnsets]:
    """Every `class_name` clip of a `harken eval` report (its `per_file`) with its voiced onset."""
    from models.data import load_audio

    params = FeatureParams()
    logmel = LogMel(params)
    out: list[ClipOnsets] = []
    for item in report["per_file"]:
        if item.get("class") != class_name or not item.get("references"):
            continue
        label_s = float(item["references"][0][1])
        reported = [d for d in item["detections"] if d[0] == class_name]
        reported_s = float(reported[0][1]) if reported else None
        path = data_dir / item["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the report's clip is not in the data folder {data_dir}")
        features = logmel.frames(load_audio(path))
        out.append(ClipOnsets(item["file"], label_s, voiced_onset_s(features, params), reported_s,
                              onset_kind(label_s, reported_s)))
    return out


def split_onsets(data_dir: Path, split: str, class_name: str = "baby_cry") -> list[ClipOnsets]:
    """Every `class_name` clip of one split with the label training gives it
    (`models.data.labelled_spans`: the manifest's span, else the evaluation's activity
    detector) and its voiced onset; nothing is reported (kind "unscored"). Silent clips,
    which training drops, are left out."""
    from models.data import labelled_spans, load_audio, read_clips, select

    params = FeatureParams()
    logmel = LogMel(params)
    out: list[ClipOnsets] = []
    for clip in select(read_clips(data_dir), split):
        if clip.class_name != class_name:
            continue
        path = Path(clip.path)  # the manifest reader joins it to data_dir
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the manifest's clip is not in the data folder {data_dir}")
        audio = load_audio(path)
        spans = labelled_spans(clip, audio)
        if not spans:
            continue
        label_s = spans[0][0]
        file = path.resolve().relative_to(Path(data_dir).resolve()).as_posix()
        out.append(ClipOnsets(file, label_s, voiced_onset_s(logmel.frames(audio), params), None, "unscored"))
    return out


def summarise(clips: Sequence[ClipOnsets], gap_s: float = 0.3) -> dict[str, dict[str, float]]:
    """Per kind: clips, the median of voiced minus labelled onset, and how many begin their
    voiced sound `gap_s` or more after the label; for late clips also how many are reported
    within the collar of their voiced onset."""
    table: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        chosen = [c for c in clips if c.kind == kind]
        if not chosen:
            continue
        gap = np.array([c.voiced_s - c.label_s for c in chosen])
        row = {"clips": len(chosen), "median_voiced_after_label_s": round(float(np.median(gap)), 2),
               "voiced_later_than_gap": int(np.sum(gap >= gap_s))}
        row.update({f"voiced_later_than_{w}s": int(np.sum(gap >= w)) for w in ONSET_WINDOWS_S})
        if kind == "late":
            row["reported_on_time_for_voiced"] = int(sum(
                abs(c.reported_s - c.voiced_s) <= COLLAR_S for c in chosen if c.reported_s is not None))
        table[kind] = row
    return table


def plot_late(clips: Sequence[ClipOnsets], data_dir: Path, out: Path, n_clips: int = 14,
              span_s: float = 7.0) -> int:
    """Log-mel pictures of the `n_clips` least-late clips, label (red), voiced onset (green)
    and report (cyan) marked; returns how many were drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from models.data import load_audio

    late = sorted((c for c in clips if c.kind == "late" and c.reported_s is not None),
                  key=lambda c: c.reported_s - c.label_s)[:n_clips]  # type: ignore[operator]
    if not late:
        return 0
    params = FeatureParams()
    logmel = LogMel(params)
    fig, axes = plt.subplots(len(late), 1, figsize=(9, 1.1 * len(late) + 0.4), squeeze=False)
    for ax, clip in zip(axes[:, 0], late, strict=True):
        features = logmel.frames(load_audio(data_dir / clip.file))
        end_s = float(params.frame_center_s(features.shape[0] - 1))
        ax.imshow(features.T, origin="lower", aspect="auto", extent=(0.0, end_s, 0, params.n_mels),
                  cmap="magma")
        ax.axvline(clip.label_s, color="red", lw=2)
        ax.axvline(clip.voiced_s, color="lime", lw=2, ls="--")
        ax.axvline(clip.reported_s, color="cyan", lw=2, ls=":")
        ax.set_xlim(0.0, min(end_s, span_s))
        ax.set_yticks([])
        ax.set_ylabel(Path(clip.file).stem[-10:], fontsize=6)
        ax.tick_params(labelsize=6)
    fig.suptitle("late reports: label onset (red), voiced onset (green, dashed), reported (cyan, dotted); "
                 "seconds into the clip", fontsize=8)
    fig.tight_layout()
    picture = io.BytesIO()
    fig.savefig(picture, dpi=64, format="png")
    plt.close(fig)
    # A 256-colour palette keeps the picture small enough to commit beside the card.
    Image.open(picture).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(out, optimize=True)
    return len(late)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.label_onsets", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--report", type=Path, help="a `harken eval` report.json")
    source.add_argument("--split", help="no report: every clip of this split with the label training gives it")
    parser.add_argument("--data", type=Path, required=True, help="the data folder the report was made on")
    parser.add_argument("--class", dest="class_name", default="baby_cry")
    parser.add_argument("--plot", type=Path, help="write the late clips' log-mel pictures here (PNG)")
    parser.add_argument("--plot-clips", type=int, default=14, help="how many late clips to draw")
    parser.add_argument("--json", type=Path, help="write every clip's onsets here")
    args = parser.parse_args(argv)
    if args.split is not None:
        if args.plot:
            parser.error("--plot draws the late clips of a report: give --report, not --split")
        if not (args.data / "MANIFEST.csv").is_file():
            parser.error(f"--data {args.data}: no MANIFEST.csv there")
        clips = split_onsets(args.data, args.split, args.class_name)
        if not clips:
            parser.error(f"--split {args.split}: no {args.class_name} clips in {args.data / 'MANIFEST.csv'}")
    else:
        if not args.report.is_file():
            parser.error(f"--report {args.report}: no such file (run `harken eval ... --out DIR` first)")
        report = json.loads(args.report.read_text())
        if "per_file" not in report:
            parser.error(f"--report {args.report}: not a harken eval report (no per_file)")
        clips = clip_onsets(report, args.data, args.class_name)
        if not clips:
            parser.error(f"--report {args.report}: no {args.class_name} clips in it")
    for kind, row in summarise(clips).items():
        print(kind, row)
    if args.json:
        args.json.write_text(json.dumps([asdict(c) for c in clips], indent=1))
    if args.plot:
        print(f"drew {plot_late(clips, args.data, args.plot, args.plot_clips)} late clips: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
