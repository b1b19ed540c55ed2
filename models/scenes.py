"""Scene mixing in the style of DCASE 2017 Task 2 (numpy only, seeded).

Isolated target events are placed at random, non-overlapping times into a bed made of
negative audio (background and confuser clips concatenated with short crossfades, each at
its own random level) at a chosen event-to-background ratio (EBR). The strong labels come
from each event clip's own activity: `active_span` finds the first and last active frame
by energy, so the natural pauses inside a cry or between alarm beeps stay inside the
event, and the quiet lead-in/lead-out of the clip is cut away before mixing.

EBR follows the DCASE 2017 Task 2 definition: the ratio of the event's RMS over its
span to the bed's RMS over the same stretch of time. Evaluation uses -6/0/+6 dB.

    rng = np.random.default_rng(7)
    scenes = build_scenes(read_manifest(data, split="dev"), n=20, rng=rng)
    for scene in scenes: scene.audio, scene.annotations
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.manifest import Annotation, ManifestError, ManifestRow

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
#: Analysis frames of the activity detector: 40 ms windows every 20 ms.
ACTIVITY_WIN_S = 0.04
ACTIVITY_HOP_S = 0.02
#: Below this peak level a clip is treated as silent (no span).
SILENCE_DBFS = -70.0
#: RMS used when the bed under an event is digital silence (about -60 dBFS).
QUIET_BED_RMS = 1e-3
_EPS = 1e-12


@dataclass(frozen=True)
class ActivitySpan:
    """The active part of a clip: from the first to the last active frame, in seconds.
    `segments` are the active stretches inside it (pauses shorter than the merge gap are
    bridged), for callers that want finer labels."""

    onset_s: float
    offset_s: float
    segments: tuple[tuple[float, float], ...]

    @property
    def duration_s(self) -> float:
        return self.offset_s - self.onset_s

    @property
    def active_fraction(self) -> float:
        """Share of the span covered by active segments."""
        active = sum(b - a for a, b in self.segments)
        return active / self.duration_s if self.duration_s > 0 else 0.0


def frame_levels_dbfs(audio: np.ndarray, sr: int = SAMPLE_RATE, win_s: float = ACTIVITY_WIN_S,
                      hop_s: float = ACTIVITY_HOP_S) -> np.ndarray:
    """RMS level of each analysis frame in dBFS, shape (frames,). Short clips give one frame."""
    x = np.asarray(audio, dtype=np.float64)
    win, hop = max(1, round(win_s * sr)), max(1, round(hop_s * sr))
    if x.shape[0] <= win:
        return np.array([10 * np.log10(np.mean(x**2) + _EPS)]) if x.size else np.zeros(0)
    n = 1 + (x.shape[0] - win) // hop
    power = np.concatenate([[0.0], np.cumsum(x**2)])
    starts = np.arange(n) * hop
    mean_power = (power[starts + win] - power[starts]) / win
    return 10 * np.log10(mean_power + _EPS)


def active_span(
    audio: np.ndarray,
    sr: int = SAMPLE_RATE,
    *,
    relative: float = 0.4,
    max_range_db: float = 40.0,
    min_run_s: float = 0.06,
    merge_gap_s: float = 0.3,
) -> ActivitySpan | None:
    """Energy-based active span of an isolated event clip; None for a silent clip.

    A frame is active when its level exceeds `floor + relative * (peak - floor)` (floor =
    10th, peak = 99th percentile of frame levels), but never more than `max_range_db`
    below the peak, so a clip recorded over digital silence still gets a sensible
    threshold, and never less than 6 dB below it, so a steady tone is active throughout.
    Active runs shorter than `min_run_s` (clicks) are ignored unless nothing else is
    active. The span runs from the first to the last active frame: pauses inside
    the event are kept in it.
    """
    levels = frame_levels_dbfs(audio, sr)
    if levels.size == 0:
        return None
    peak = float(np.percentile(levels, 99))
    if peak < SILENCE_DBFS:
        return None
    duration_s = len(audio) / sr
    floor = float(np.percentile(levels, 10))
    threshold = max(floor + relative * (peak - floor), peak - max_range_db)
    # A steady sound (floor close to peak) is active throughout, not split by ripples.
    threshold = min(threshold, peak - 6.0)
    active = levels >= threshold
    runs = _runs(active)
    min_frames = max(1, round(min_run_s / ACTIVITY_HOP_S))
    long_runs = [(a, b) for a, b in runs if b - a >= min_frames]
    runs = long_runs or runs
    if not runs:  # every frame equal and below an unreachable threshold: the whole clip
        return ActivitySpan(0.0, round(duration_s, 4), ((0.0, round(duration_s, 4)),))

    def start_s(frame: int) -> float:
        return frame * ACTIVITY_HOP_S

    def end_s(frame_end: int) -> float:  # exclusive end frame -> end of its window
        return min(duration_s, (frame_end - 1) * ACTIVITY_HOP_S + ACTIVITY_WIN_S)

    segments: list[tuple[float, float]] = []
    for a, b in runs:
        s, e = start_s(a), end_s(b)
        if segments and s - segments[-1][1] < merge_gap_s:
            segments[-1] = (segments[-1][0], e)
        else:
            segments.append((s, e))
    rounded = tuple((round(s, 4), round(e, 4)) for s, e in segments)
    return ActivitySpan(rounded[0][0], rounded[-1][1], rounded)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index pairs of the True runs of a boolean vector."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.asarray(x, dtype=np.float64) ** 2))) if x.size else 0.0


def _fade(x: np.ndarray, fade_s: float = 0.005, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Short linear fade in/out so that trimmed edges do not click."""
    n = min(int(fade_s * sr), x.shape[0] // 2)
    if n <= 0:
        return x
    y = x.copy()
    ramp = np.linspace(0.0, 1.0, n, dtype=y.dtype)
    y[:n] *= ramp
    y[-n:] *= ramp[::-1]
    return y


@dataclass(frozen=True)
class SceneEvent:
    """An isolated target event to mix: its audio, and optionally its span (else found)."""

    class_name: str
    audio: np.ndarray
    span: ActivitySpan | None = None
    source: str = ""

    def trimmed(self, sr: int = SAMPLE_RATE) -> np.ndarray:
        """The event audio cut to its active span (the whole clip when silent)."""
        span = self.span or active_span(self.audio, sr)
        if span is None:
            return self.audio
        a, b = int(span.onset_s * sr), math.ceil(span.offset_s * sr)
        return _fade(self.audio[a:b], sr=sr)


def mix_scene(
    bed: np.ndarray,
    events: Sequence[SceneEvent],
    ebr_db: float | Sequence[float],
    rng: np.random.Generator,
    *,
    file: str = "scene",
    sr: int = SAMPLE_RATE,
    min_gap_s: float = 1.0,
    margin_s: float = 0.5,
) -> tuple[np.ndarray, list[Annotation]]:
    """Mix `events` into a copy of `bed` at random non-overlapping times.

    Each event is cut to its active span and scaled so that its RMS is `ebr_db` (one
    value, or one per event) above the bed's RMS over the same samples. Events are at
    least `min_gap_s` apart and `margin_s` from the scene's edges; placement is uniform
    over all such arrangements (in random order). If the mix would clip, the whole
    scene is scaled down (ratios unchanged). Returns (audio float32, annotations in the
    order of `events`, `file` as their file name). Raises ValueError if they don't fit.
    """
    ebrs = [float(ebr_db)] * len(events) if np.isscalar(ebr_db) else [float(e) for e in ebr_db]  # type: ignore[arg-type]
    if len(ebrs) != len(events):
        raise ValueError(f"{len(events)} events but {len(ebrs)} EBR values")
    mix = np.asarray(bed, dtype=np.float32).copy()
    clips = [e.trimmed(sr) for e in events]
    lengths = [c.shape[0] for c in clips]
    gap, margin = int(min_gap_s * sr), int(margin_s * sr)
    needed = sum(lengths) + gap * max(len(clips) - 1, 0) + 2 * margin
    free = mix.shape[0] - needed
    if free < 0:
        raise ValueError(f"events of {sum(lengths) / sr:.1f} s with gaps do not fit a "
                         f"{mix.shape[0] / sr:.1f} s scene")
    order = rng.permutation(len(clips))
    # Uniform placement of non-overlapping intervals: sorted uniform slack before each.
    slack = np.sort(rng.integers(0, free + 1, size=len(clips)))
    starts = [0] * len(clips)
    cursor = margin
    for k, idx in enumerate(order):
        at = cursor + int(slack[k])
        starts[idx] = at
        cursor += lengths[idx] + gap
    bed_rms_all = max(_rms(mix), QUIET_BED_RMS)
    placed: list[tuple[int, np.ndarray]] = []
    for clip, at, ebr in zip(clips, starts, ebrs, strict=True):
        event_rms = _rms(clip)
        if event_rms <= 0:
            continue
        under = _rms(np.asarray(bed[at : at + clip.shape[0]]))
        # A silent stretch of bed has no level to compare with: use the whole bed's.
        reference = under if under > QUIET_BED_RMS else bed_rms_all
        placed.append((at, clip * np.float32(reference * 10 ** (ebr / 20) / event_rms)))
    for at, clip in placed:
        mix[at : at + clip.shape[0]] += clip
    peak = float(np.max(np.abs(mix))) if mix.size else 0.0
    if peak > 0.99:
        mix *= np.float32(0.99 / peak)
    annotations = [
        Annotation(file, e.class_name, round(at / sr, 4), round((at + n) / sr, 4))
        for e, at, n in zip(events, starts, lengths, strict=True)
    ]
    return mix, annotations


def build_bed(
    clips: Sequence[np.ndarray] | Callable[[], np.ndarray],
    n_samples: int,
    rng: np.random.Generator,
    *,
    level_dbfs: tuple[float, float] = (-45.0, -25.0),
    crossfade_s: float = 0.02,
    sr: int = SAMPLE_RATE,
) -> np.ndarray:
    """A bed of `n_samples` from negative clips concatenated with linear crossfades.

    `clips` is a list to draw from (with replacement) or a function returning the next
    clip. Each piece is brought to its own random RMS level in `level_dbfs` (gain capped
    at +40 dB so near-silent clips are not blown up into noise), as rooms, distances and
    devices differ. The first piece starts at a random offset.
    """
    if isinstance(clips, Sequence) and len(clips) == 0:
        raise ValueError("no negative clips to build a bed from")

    def draw() -> np.ndarray:
        if callable(clips):
            return np.asarray(clips(), dtype=np.float32)
        return np.asarray(clips[int(rng.integers(len(clips)))], dtype=np.float32)

    fade = int(crossfade_s * sr)
    out = np.zeros(n_samples, dtype=np.float32)
    filled = 0
    first = True
    while filled < n_samples:
        piece = draw()
        if piece.shape[0] <= 2 * fade:
            continue
        if first:
            piece = piece[int(rng.integers(0, max(1, piece.shape[0] // 2))) :]
            first = False
        gain = 10 ** (rng.uniform(*level_dbfs) / 20) / max(_rms(piece), 1e-12)
        piece = piece * np.float32(min(gain, 100.0))
        piece = _fade(piece, crossfade_s, sr) if filled else piece
        start = max(0, filled - fade)  # overlap the fades
        n = min(piece.shape[0], n_samples - start)
        out[start : start + n] += piece[:n]
        filled = start + n
    return out


@dataclass(frozen=True)
class PlacedEvent:
    """An event in a scene: its label, the EBR it was mixed at, and its source clip."""

    annotation: Annotation
    ebr_db: float
    source: str


@dataclass(frozen=True)
class Scene:
    name: str
    audio: np.ndarray  # (samples,) float32 at 16 kHz
    events: tuple[PlacedEvent, ...]
    bed_sources: tuple[str, ...]

    @property
    def annotations(self) -> list[Annotation]:
        return [e.annotation for e in self.events]

    @property
    def duration_s(self) -> float:
        return self.audio.shape[0] / SAMPLE_RATE


def _default_loader(cache_size: int) -> Callable[[ManifestRow], np.ndarray]:
    from service.audio.sources import SourceError, read_audio

    @functools.lru_cache(maxsize=cache_size)
    def load_path(path: str, where: str) -> np.ndarray:
        try:
            return read_audio(path)
        except SourceError as exc:
            raise ManifestError(f"{where}: {exc}") from None

    return lambda row: load_path(str(row.file), row.where)


def iter_scenes(
    rows: Sequence[ManifestRow],
    n: int,
    rng: np.random.Generator,
    *,
    scene_s: float = 30.0,
    ebrs_db: Sequence[float] = (-6.0, 0.0, 6.0),
    ebr_range_db: tuple[float, float] | None = None,
    max_events: int = 2,
    min_gap_s: float = 2.0,
    max_event_s: float = 10.0,
    bed_level_dbfs: tuple[float, float] = (-45.0, -25.0),
    load: Callable[[ManifestRow], np.ndarray] | None = None,
    name_prefix: str = "scene",
    cache_size: int = 256,
) -> Iterator[Scene]:
    """Yield `n` scenes of `scene_s` seconds from manifest rows (targets and negatives).

    Each scene holds 0..`max_events` events (uniform), each of a target class drawn
    uniformly (so a rare class is as present as a common one), from a clip of that
    class drawn uniformly, at an EBR drawn from `ebrs_db` (or uniform in `ebr_range_db`,
    e.g. (-6, 12) for training). Event clips are cut to their span (manifest onset/offset
    when given, else `active_span`) and to at most `max_event_s` (a random window).
    Everything depends only on `rng`: the same seed gives the same scenes.
    """
    targets = [r for r in rows if r.is_target]
    negatives = [r for r in rows if r.is_negative]
    if not negatives:
        raise ManifestError("scenes need background or confuser_* rows for their beds; none given")
    if not targets and max_events > 0:
        raise ManifestError("scenes need target-class rows for their events; none given")
    loader = load or _default_loader(cache_size)
    by_class: dict[str, list[ManifestRow]] = {}
    for r in targets:
        by_class.setdefault(r.class_name, []).append(r)
    class_names = sorted(by_class)
    n_samples = round(scene_s * SAMPLE_RATE)
    margin_s = 0.5
    for i in range(n):
        k = int(rng.integers(0, max_events + 1)) if class_names else 0
        chosen: list[tuple[SceneEvent, float]] = []
        budget = n_samples - 2 * margin_s * SAMPLE_RATE
        for _ in range(k):
            cls = class_names[int(rng.integers(len(class_names)))]
            row = by_class[cls][int(rng.integers(len(by_class[cls])))]
            event = _event_of(row, loader(row), rng, max_event_s)
            ebr = (float(rng.uniform(*ebr_range_db)) if ebr_range_db is not None
                   else float(ebrs_db[int(rng.integers(len(ebrs_db)))]))
            length = event.audio.shape[0] + (min_gap_s * SAMPLE_RATE if chosen else 0)
            if length > budget:
                continue  # does not fit next to the events already chosen
            budget -= length
            chosen.append((event, ebr))
        used: list[str] = []

        def next_negative() -> np.ndarray:
            # Called at once by build_bed, inside this iteration: the closure is safe.
            row = negatives[int(rng.integers(len(negatives)))]
            used.append(row.path)  # noqa: B023
            return loader(row)

        bed = build_bed(next_negative, n_samples, rng, level_dbfs=bed_level_dbfs)
        name = f"{name_prefix}_{i:04d}.flac"
        audio, annotations = mix_scene(
            bed, [e for e, _ in chosen], [b for _, b in chosen], rng,
            file=name, min_gap_s=min_gap_s, margin_s=margin_s,
        )
        placed = tuple(
            PlacedEvent(a, ebr, e.source) for a, (e, ebr) in zip(annotations, chosen, strict=True)
        )
        ordered = tuple(sorted(placed, key=lambda p: p.annotation.onset_s))
        yield Scene(name, audio, ordered, tuple(used))


def _event_of(row: ManifestRow, audio: np.ndarray, rng: np.random.Generator,
              max_event_s: float) -> SceneEvent:
    """The row's event cut to its span and to at most `max_event_s` (span is then exact)."""
    if row.onset_s is not None and row.offset_s is not None:
        a, b = int(row.onset_s * SAMPLE_RATE), math.ceil(row.offset_s * SAMPLE_RATE)
        cut = audio[a:b]
    else:
        span = active_span(audio)
        cut = SceneEvent(row.class_name, audio, span).trimmed() if span else audio
    limit = int(max_event_s * SAMPLE_RATE)
    if cut.shape[0] > limit:
        start = int(rng.integers(0, cut.shape[0] - limit + 1))
        cut = _fade(cut[start : start + limit])
    whole = round(cut.shape[0] / SAMPLE_RATE, 4)
    # The cut IS the event: mark its span explicitly so that mixing does not trim again.
    return SceneEvent(row.class_name, cut, ActivitySpan(0.0, whole, ((0.0, whole),)), row.path)


def build_scenes(rows: Sequence[ManifestRow], n: int, rng: np.random.Generator,
                 **options: object) -> list[Scene]:
    """`iter_scenes` as a list (see there for the options)."""
    return list(iter_scenes(rows, n, rng, **options))  # type: ignore[arg-type]


def write_scenes(scenes: Sequence[Scene], folder: str | Path) -> Path:
    """Write scenes as 16-bit FLAC plus a DCASE-style `scenes.tsv` (files without events
    listed alone); returns the TSV path, readable with `models.manifest.read_tsv`."""
    import soundfile as sf

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["filename\tonset\toffset\tevent_label"]
    for scene in scenes:
        sf.write(str(out / scene.name), scene.audio, SAMPLE_RATE, subtype="PCM_16")
        if not scene.events:
            lines.append(scene.name)
        for e in scene.events:
            a = e.annotation
            lines.append(f"{a.file}\t{a.onset_s:.4f}\t{a.offset_s:.4f}\t{a.class_name}")
    tsv = out / "scenes.tsv"
    tsv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tsv
