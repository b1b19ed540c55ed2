"""Training and development examples: manifest rows -> labelled scenes -> log-mel frames.

Real positives are few, so they are multiplied honestly:

* **Scenes** (DCASE 2017 Task 2 style): isolated target clips are placed at random times
  into streams built from background and confuser clips, at event-to-background ratios
  (EBR) of about -6 to +12 dB. Strong labels come from each clip's own activity (frame
  energy), and pauses shorter than a class's merge gap stay *inside* the event.
* **Quality-aware labels**: `weak` clips (1 s chunks cut from longer recordings, many
  without the event) get no frame labels; they only say "somewhere in here", which the
  event-pooled loss term can use (with a lower weight) and frame-wise losses see with
  `weak_frame_weight`.
* **Procedural alarms** (models/synth.py) cover what the recordings lack: T3 smoke, T4 CO
  and 520 Hz low-frequency alarms; a small share of procedural cries and glass keeps the
  synthetic demo meaningful.
* **Augmentation**: gain, microphone/phone EQ, room reverb from simulated impulse
  responses (pyroomacoustics shoebox rooms, or exponential-decay noise when it is not
  installed), source distance (through the room simulation), added noise, time shift.

Features always come from `service.audio.features.LogMel`, the daemon's own front end.
Only the `train` split feeds training; `dev` builds the selection/tuning scenes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import scipy.fft
import scipy.signal
import soundfile as sf

from models import synth
from models.label_onsets import voiced_onset_s
from models.manifest import licence_is_open, read_manifest
from models.scenes import active_span
from service.audio.features import FeatureParams, LogMel

log = logging.getLogger(__name__)

CLASSES: tuple[str, ...] = ("baby_cry", "smoke_alarm", "glass_break")
#: Bumped whenever scene generation or labelling changes, so that caches are rebuilt.
DATA_VERSION = 3
SAMPLE_RATE = 16000
#: Pauses shorter than this stay inside one labelled event (breaths, T3 gaps, shards).
MERGE_GAP_S = {"baby_cry": 1.0, "smoke_alarm": 2.0, "glass_break": 0.5}


def is_open_licence(text: str) -> bool:
    """True for licence fields that name an open licence and no restriction or doubt
    (the evaluation's rule, `models.manifest.licence_is_open`, so both agree)."""
    return licence_is_open(text)


@dataclass(frozen=True)
class Clip:
    """One manifest row."""

    path: Path
    class_name: str
    split: str
    source: str
    licence: str
    group: str
    quality: str
    onset_s: float | None = None
    offset_s: float | None = None

    @property
    def is_target(self) -> bool:
        return self.class_name in CLASSES


def read_clips(data_dir: str | Path) -> list[Clip]:
    """Rows of DATA_DIR/MANIFEST.csv, read and validated by the evaluation's reader
    (`models.manifest.read_manifest`: one error listing each bad line)."""
    manifest = Path(data_dir) / "MANIFEST.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found: --data must be a folder with MANIFEST.csv")
    return [
        Clip(
            path=row.file,
            class_name=row.class_name,
            split=row.split,
            source=row.source,
            licence=row.license,
            group=row.group,
            quality=row.quality or "unknown",
            onset_s=row.onset_s,
            offset_s=row.offset_s,
        )
        for row in read_manifest(manifest, check_files=False)
    ]


def select(clips: Iterable[Clip], split: str, licences: str = "all") -> list[Clip]:
    """Clips of one split; `licences="open"` keeps openly licensed sources only."""
    if licences not in ("all", "open"):
        raise ValueError(f"licences must be 'all' or 'open', got {licences!r}")
    return [
        c for c in clips if c.split == split and (licences == "all" or is_open_licence(c.licence))
    ]


def load_audio(path: Path) -> np.ndarray:
    """16 kHz mono float32; raises ValueError naming the file for any other rate."""
    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    if rate != SAMPLE_RATE:
        raise ValueError(f"{path}: {rate} Hz, the data set must be 16 kHz")
    return audio.mean(axis=1)


# --------------------------------------------------------------------------- labels
def activity_spans(audio: np.ndarray, merge_gap_s: float) -> list[tuple[float, float]]:
    """The active span (seconds) of an isolated clip: first to last active frame, pauses
    inside kept, from the evaluation's own activity detector (`models.scenes.active_span`)
    so that training labels and evaluation ground truth agree (one event per clip).
    `merge_gap_s` bridges pauses in the span's segments; a span whose segments are all
    clicks shorter than 60 ms is dropped. Returns [] for a silent clip."""
    span = active_span(audio, SAMPLE_RATE, merge_gap_s=merge_gap_s)
    if span is None or span.duration_s < 0.06:
        return []
    return [(float(span.onset_s), float(span.offset_s))]


def labelled_spans(clip: Clip, audio: np.ndarray) -> list[tuple[float, float]]:
    """The spans (seconds) training gives a target clip: the manifest's onset and offset
    where it has both, else the clip's active span (`activity_spans`); [] for a silent clip."""
    if clip.onset_s is not None and clip.offset_s is not None:
        return [(clip.onset_s, clip.offset_s)]
    return activity_spans(audio, MERGE_GAP_S[clip.class_name])


@dataclass(frozen=True)
class Event:
    """A labelled event in a scene. `weight` scales its loss; `weak` means frame labels unknown."""

    class_index: int
    onset_s: float
    offset_s: float
    weight: float = 1.0
    weak: bool = False
    #: Where the onset term's window starts (seconds); None: at `onset_s`.
    onset_anchor_s: float | None = None


@dataclass
class LabelledScene:
    """A scene's frames and labels. Frame j of every array belongs to feature frame j."""

    features: np.ndarray  # (T, n_mels) float16
    target: np.ndarray  # (T, C) uint8: 1 inside a labelled event of that class
    weight: np.ndarray  # (T, C) float16: frame-wise loss weight; 0 = label unknown
    events: list[tuple[int, int, int, float]]  # (class index, first frame, end frame, weight)


def frame_labels(
    events: Sequence[Event], n_frames: int, params: FeatureParams, weak_frame_weight: float
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int, float]]]:
    """Frame targets, frame weights and event frame spans for events in seconds."""
    centres = np.asarray(params.frame_center_s(np.arange(n_frames)))
    target = np.zeros((n_frames, len(CLASSES)), dtype=np.uint8)
    weight = np.ones((n_frames, len(CLASSES)), dtype=np.float16)
    spans: list[tuple[int, int, int, float]] = []
    for ev in events:
        inside = _frames_inside(ev, centres)
        if inside.size == 0:
            continue
        first, end = int(inside[0]), int(inside[-1]) + 1
        target[first:end, ev.class_index] = 1
        if ev.weak:
            weight[first:end, ev.class_index] = np.minimum(
                weight[first:end, ev.class_index], weak_frame_weight
            )
        spans.append((ev.class_index, first, end, ev.weight))
    return target, weight, spans


def _frames_inside(ev: Event, centres: np.ndarray) -> np.ndarray:
    return np.flatnonzero((centres >= ev.onset_s) & (centres < ev.offset_s))


def onset_anchor_frames(events: Sequence[Event], n_frames: int, params: FeatureParams) -> list[int]:
    """For each span `frame_labels` returns (the same events, the same order), the frame the
    onset term's window starts at: the span's first frame at or after the event's
    `onset_anchor_s` (its first frame when it has none); `n_frames` when the anchor lies past
    the span's frames (an event cut off before its voiced sound has no window)."""
    centres = np.asarray(params.frame_center_s(np.arange(n_frames)))
    anchors: list[int] = []
    for ev in events:
        inside = _frames_inside(ev, centres)
        if inside.size == 0:
            continue
        later = inside if ev.onset_anchor_s is None else inside[centres[inside] >= ev.onset_anchor_s]
        anchors.append(int(later[0]) if later.size else n_frames)
    return anchors


# --------------------------------------------------------------------------- augmentation
def simulated_rirs(n: int, seed: int) -> list[np.ndarray]:
    """Room impulse responses of random shoebox rooms, sources 0.5-6 m from the microphone.

    Uses pyroomacoustics (image source method) when installed; otherwise exponentially
    decaying noise with a direct path, which is what a diffuse late reverb looks like.
    """
    rng = np.random.default_rng(seed)
    rirs: list[np.ndarray] = []
    try:
        import pyroomacoustics as pra
    except ImportError:  # pragma: no cover - depends on the environment
        pra = None
    for _ in range(n):
        rt60_s = rng.uniform(0.15, 0.7)
        if pra is not None:
            dims = np.array([rng.uniform(3, 7), rng.uniform(3, 6), rng.uniform(2.4, 3.0)])
            try:
                absorption, max_order = pra.inverse_sabine(rt60_s, dims)
                room = pra.ShoeBox(
                    dims,
                    fs=SAMPLE_RATE,
                    materials=pra.Material(absorption),
                    max_order=min(int(max_order), 12),
                )
                mic = dims * rng.uniform(0.2, 0.8, 3)
                src = dims * rng.uniform(0.1, 0.9, 3)
                room.add_source(src)
                room.add_microphone(mic)
                room.compute_rir()
                rir = np.asarray(room.rir[0][0], dtype=np.float32)
            except (ValueError, RuntimeError):
                rir = _noise_rir(rt60_s, rng)
        else:
            rir = _noise_rir(rt60_s, rng)
        rir = rir[np.argmax(np.abs(rir)) :][: int(0.8 * SAMPLE_RATE)]  # start at the direct path
        rirs.append((rir / (np.abs(rir).max() + 1e-9)).astype(np.float32))
    return rirs


def _noise_rir(rt60_s: float, rng: np.random.Generator) -> np.ndarray:
    n = int(min(rt60_s, 0.8) * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    rir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60_s) * rng.uniform(0.1, 0.5)
    rir[0] = 1.0
    return rir.astype(np.float32)


def random_eq(audio: np.ndarray, rng: np.random.Generator, phone_prob: float = 0.15) -> np.ndarray:
    """A random smooth microphone response (+-6 dB) or, sometimes, a phone band (300-3400 Hz)."""
    n = audio.shape[0]
    if n < 64:
        return audio
    # A fast FFT length: numpy's FFT of an odd-sized scene (large prime factors) is 10x slower.
    n_fft = scipy.fft.next_fast_len(n, real=True)
    spectrum = scipy.fft.rfft(audio, n_fft)
    freqs = np.fft.rfftfreq(n_fft, 1 / SAMPLE_RATE)
    curve_db = random_eq_curve_db(freqs, rng, phone_prob)
    return scipy.fft.irfft(spectrum * 10 ** (curve_db / 20), n_fft)[:n].astype(np.float32)


def random_eq_curve_db(freqs_hz: np.ndarray, rng: np.random.Generator, phone_prob: float) -> np.ndarray:
    """A random smooth microphone response (+-6 dB at 7 anchors, log-frequency
    interpolation) at `freqs_hz`, or sometimes a phone band (300-3400 Hz, -40 dB outside)."""
    anchors_hz = np.array([50, 150, 400, 1000, 2500, 5000, 8000], dtype=float)
    gains_db = rng.uniform(-6, 6, anchors_hz.size)
    curve_db = np.interp(np.log(np.maximum(freqs_hz, 20.0)), np.log(anchors_hz), gains_db)
    if rng.random() < phone_prob:
        lo, hi = rng.uniform(200, 400), rng.uniform(3000, 4000)
        curve_db = curve_db - 40.0 * ((freqs_hz < lo) | (freqs_hz > hi))
    return curve_db


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def _active_rms(x: np.ndarray) -> float:
    """RMS of the louder half of 20 ms blocks: the level of the sound, not of its pauses."""
    n = x.shape[0] // 320
    if n < 2:
        return _rms(x)
    blocks = np.sqrt(np.mean(np.square(x[: n * 320].reshape(n, 320), dtype=np.float64), axis=1))
    loud = np.sort(blocks)[n // 2 :]
    return float(np.sqrt(np.mean(loud**2)))


# --------------------------------------------------------------------------- scene synthesis
@dataclass
class SceneConfig:
    """Recipe of the training scenes (the `data:` section of a training config)."""

    n_scenes: int = 3000
    scene_s: float = 10.0
    ebr_db: tuple[float, float] = (-6.0, 12.0)
    #: Probabilities of 0, 1, 2 target events in a scene.
    events_per_scene: tuple[float, float, float] = (0.2, 0.55, 0.25)
    #: Relative frequency of each target class among events.
    class_mix: dict[str, float] = field(
        default_factory=lambda: {"baby_cry": 0.35, "smoke_alarm": 0.35, "glass_break": 0.30}
    )
    #: Share of procedural events per class (alarms: the recordings lack T4/520 Hz).
    procedural_share: dict[str, float] = field(
        default_factory=lambda: {"baby_cry": 0.08, "smoke_alarm": 0.6, "glass_break": 0.08}
    )
    #: Real clips longer than this are cut to a random 1.5 s..excerpt_above_s stretch
    #: with probability excerpt_prob.
    excerpt_above_s: float = 5.0
    excerpt_prob: float = 0.6
    weak_event_weight: float = 0.25
    weak_frame_weight: float = 0.25
    reverb_prob: float = 0.6
    eq_prob: float = 0.7
    noise_prob: float = 0.5
    quiet_bed_prob: float = 0.15
    n_rirs: int = 32
    licences: str = "all"
    seed: int = 1234
    #: Per class, a [low, high] range of playback speed factors, e.g. {baby_cry: [0.85, 1.15]}:
    #: each of the class's events is resampled by a factor drawn from it (pitch and tempo
    #: together, its labelled spans scaled with it): more voices and rhythms from few clips.
    speed: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: Classes whose real clips anchor the onset term at their voiced onset
    #: (`models.label_onsets.voiced_onset_s`) rather than at the label: a cry labelled from
    #: the breath or knock before it is asked for a confident score where the cry begins.
    #: Frame labels and every other term keep the label.
    voiced_onset_classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in self.voiced_onset_classes:
            if name not in CLASSES:
                raise ValueError(
                    f"data.voiced_onset_classes: unknown class {name!r} (classes: {', '.join(CLASSES)})"
                )
        for name, pair in self.speed.items():
            if name not in CLASSES:
                raise ValueError(f"data.speed: unknown class {name!r} (classes: {', '.join(CLASSES)})")
            if len(pair) != 2 or not 0.5 <= float(pair[0]) <= float(pair[1]) <= 2.0:
                raise ValueError(
                    f"data.speed.{name}: a [low, high] pair of speed factors within 0.5..2.0, got {list(pair)}"
                )


class ClipBank:
    """Decoded clips of one split, grouped as targets (with activity spans) and negatives."""

    def __init__(self, clips: Sequence[Clip], max_negative_s: float = 20.0) -> None:
        self.targets: dict[str, list[tuple[np.ndarray, list[tuple[float, float]], bool, Clip]]] = {
            c: [] for c in CLASSES
        }
        self.negatives: list[np.ndarray] = []
        self.negative_clips: list[Clip] = []
        for clip in clips:
            audio = load_audio(clip.path)
            if clip.is_target:
                weak = clip.quality == "weak"
                # Weak clips get the same span rule; only their weights differ.
                spans = labelled_spans(clip, audio)
                if spans:
                    self.targets[clip.class_name].append((audio, spans, weak, clip))
            elif clip.class_name == "background" or clip.class_name.startswith("confuser"):
                self.negatives.append(audio[: int(max_negative_s * SAMPLE_RATE)])
                self.negative_clips.append(clip)

    def summary(self) -> dict[str, object]:
        def minutes(items: Iterable[np.ndarray]) -> float:
            return round(sum(a.shape[0] for a in items) / SAMPLE_RATE / 60, 2)

        return {
            **{
                c: {
                    "clips": len(v),
                    "minutes": minutes(a for a, *_ in v),
                    "weak": sum(1 for _, _, w, _ in v if w),
                }
                for c, v in self.targets.items()
            },
            "negatives": {"clips": len(self.negatives), "minutes": minutes(self.negatives)},
        }


def negative_bed(
    negatives: Sequence[np.ndarray],
    n_samples: int,
    rng: np.random.Generator,
    weights: np.ndarray | None = None,
    placed: list[tuple[int, int, int, int]] | None = None,
) -> np.ndarray:
    """A stream of random negative clips with random gains and short cross-fades.
    `weights` (one per clip) makes some clips likelier, e.g. mined confusers. `placed`,
    when given, receives (clip index, first sample, end sample, the clip's own sample at
    the first) of every piece laid in the stream; it draws nothing from `rng`, so the
    stream is the same with or without it."""
    out = np.zeros(n_samples, dtype=np.float32)
    if not negatives:
        return (synth.background(n_samples / SAMPLE_RATE, rng) * 0.1)[:n_samples]
    pos = -int(rng.uniform(0, 2.0) * SAMPLE_RATE)  # start inside the first clip
    fade = int(0.05 * SAMPLE_RATE)
    while pos < n_samples:
        pick = int(rng.integers(len(negatives))) if weights is None else int(rng.choice(len(negatives), p=weights))
        clip = negatives[pick]
        clip = clip / (_active_rms(clip) + 1e-6) * 0.05 * 10 ** (rng.uniform(-10, 6) / 20)
        seg = clip.astype(np.float32).copy()
        if seg.shape[0] > 2 * fade:
            seg[:fade] *= np.linspace(0, 1, fade, dtype=np.float32)
            seg[-fade:] *= np.linspace(1, 0, fade, dtype=np.float32)
        a, b = max(pos, 0), min(pos + seg.shape[0], n_samples)
        if b > a:
            out[a:b] += seg[a - pos : b - pos]
            if placed is not None:
                placed.append((pick, a, b, a - pos))
        pos += max(seg.shape[0] - fade, int(0.2 * SAMPLE_RATE)) + int(
            rng.uniform(0, 0.5) * SAMPLE_RATE
        )
    return out


def sounder(
    rng: np.random.Generator, duration_s: float
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """A pulsed or continuous alarm sounder (building fire alarms, older smoke alarms):
    a piezo tone of 2.5-4.2 kHz with harmonics, on/off times the T3/T4 patterns do not
    cover. Returns the signal and its tone spans in seconds."""
    freq_hz = rng.uniform(2500.0, 4200.0)
    continuous = rng.random() < 0.3
    on_s, off_s = (
        (duration_s, 0.0) if continuous else (rng.uniform(0.15, 1.0), rng.uniform(0.08, 0.6))
    )
    n = int(duration_s * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    phase = 2 * np.pi * freq_hz * t * (1 + rng.uniform(-0.01, 0.01) * t / duration_s)
    wave = np.sin(phase) + 0.3 * np.sin(2 * phase) + 0.15 * np.sin(3 * phase)
    gate = ((t % (on_s + off_s)) < on_s).astype(np.float32)
    # 4 ms ramps against clicks.
    gate = np.convolve(gate, np.ones(64) / 64, mode="same")
    spans = [(0.0, duration_s)]
    return (wave * gate).astype(np.float32), spans


def procedural_event(
    class_name: str, rng: np.random.Generator
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """A procedural event and its labelled span(s) in seconds."""
    if class_name == "smoke_alarm":
        pattern = str(rng.choice(["t3", "t3", "t4", "low", "sounder", "sounder"]))
        if pattern == "sounder":
            return sounder(rng, rng.uniform(1.5, 6.0))
        cycles = int(rng.integers(1, 3)) if pattern != "t4" else 1
        sig, tones = synth.alarm(pattern, cycles, rng)
        end = int(tones[-1][1] * SAMPLE_RATE)
        return sig[:end], [(tones[0][0], tones[-1][1])]
    if class_name == "baby_cry":
        sig = synth.cry(rng.uniform(1.5, 5.0), rng)
        return sig, [(0.0, sig.shape[0] / SAMPLE_RATE)]
    sig = synth.glass(rng)
    return sig, [(0.0, min(sig.shape[0] / SAMPLE_RATE, 0.6))]


def _anchor_within(span: tuple[float, float], anchor_s: float) -> float:
    """`anchor_s` where it lies inside `span`; the span's onset where it does not (never
    before the label, and a clip whose voiced sound begins past the span keeps the label)."""
    return anchor_s if span[0] <= anchor_s < span[1] else span[0]


def change_speed(
    sig: np.ndarray, spans: Sequence[tuple[float, float]], factor: float
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """`sig` played `factor` times as fast (band-limited resampling: pitch up and length down
    together, as a tape runs faster) and its spans in seconds on the new time axis."""
    ratio = Fraction(factor).limit_denominator(200)
    up, down = ratio.denominator, ratio.numerator
    out = scipy.signal.resample_poly(sig, up, down).astype(np.float32)
    exact = down / up
    return out, [(a / exact, b / exact) for a, b in spans]


class SceneMaker:
    """Random labelled scenes from a ClipBank (audio domain, then shared log-mel)."""

    def __init__(
        self, bank: ClipBank, cfg: SceneConfig, params: FeatureParams | None = None
    ) -> None:
        self.bank, self.cfg = bank, cfg
        self.params = params or FeatureParams()
        self.logmel = LogMel(self.params)
        self.rirs = simulated_rirs(cfg.n_rirs, cfg.seed) if cfg.reverb_prob > 0 else []
        # Each real clip's voiced onset (seconds into the clip), for the classes whose onset
        # term starts there; measured once, on the clean clip.
        self.voiced_onsets: dict[str, list[float]] = {
            name: [voiced_onset_s(self.logmel.frames(audio), self.params) for audio, *_ in bank.targets[name]]
            for name in cfg.voiced_onset_classes
        }

    def pick_event(
        self, class_name: str, rng: np.random.Generator
    ) -> tuple[np.ndarray, list[tuple[float, float]], bool]:
        """An event of `class_name` (real or procedural), its labelled spans in seconds, and
        whether its labels are weak; at a drawn speed where `data.speed` names the class."""
        sig, spans, _, weak = self.pick_event_anchored(class_name, rng)
        return sig, spans, weak

    def pick_event_anchored(
        self, class_name: str, rng: np.random.Generator
    ) -> tuple[np.ndarray, list[tuple[float, float]], list[float], bool]:
        """`pick_event` with, per span, where its onset term's window starts (seconds): the
        span's onset, or the clip's voiced onset inside its first span where
        `data.voiced_onset_classes` names the class. Draws what `pick_event` draws."""
        sig, spans, anchors, weak = self._pick_clip(class_name, rng)
        if class_name in self.cfg.speed:
            # The anchors ride along as zero-length spans: one time axis for both.
            sig, moved = change_speed(
                sig, [*spans, *((t, t) for t in anchors)], float(rng.uniform(*self.cfg.speed[class_name]))
            )
            spans, anchors = moved[: len(spans)], [t for t, _ in moved[len(spans) :]]
        return sig, spans, anchors, weak

    def _pick_clip(
        self, class_name: str, rng: np.random.Generator
    ) -> tuple[np.ndarray, list[tuple[float, float]], list[float], bool]:
        real = self.bank.targets[class_name]
        if not real or rng.random() < self.cfg.procedural_share.get(class_name, 0.0):
            sig, spans = procedural_event(class_name, rng)
            return sig, spans, [a for a, _ in spans], False
        index = int(rng.integers(len(real)))
        audio, spans, weak, _ = real[index]
        anchors = [a for a, _ in spans]
        if class_name in self.voiced_onsets:
            anchors[0] = _anchor_within(spans[0], self.voiced_onsets[class_name][index])
        duration_s = audio.shape[0] / SAMPLE_RATE
        if duration_s > self.cfg.excerpt_above_s and rng.random() < self.cfg.excerpt_prob:
            # A random stretch of a long recording: events of varied length, and scenes
            # that are not mostly one long cry.
            length_s = rng.uniform(1.5, self.cfg.excerpt_above_s)
            start_s = rng.uniform(0.0, duration_s - length_s)
            kept = [
                (a, b, anchor)
                for (a, b), anchor in zip(spans, anchors, strict=True)
                if b > start_s + 0.3 and a < start_s + length_s - 0.3
            ]
            if kept:
                cut = [(max(a - start_s, 0.0), min(b - start_s, length_s)) for a, b, _ in kept]
                cut_anchors = [
                    _anchor_within(span, anchor - start_s) for span, (*_, anchor) in zip(cut, kept, strict=True)
                ]
                first = int(start_s * SAMPLE_RATE)
                return audio[first : first + int(length_s * SAMPLE_RATE)], cut, cut_anchors, weak
        return audio, spans, anchors, weak

    def reverberate(self, sig: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """`sig` in one of the simulated rooms, with a quarter of the room's tail after it."""
        rir = self.rirs[int(rng.integers(len(self.rirs)))]
        return scipy.signal.fftconvolve(sig, rir)[: sig.shape[0] + rir.shape[0] // 4].astype(np.float32)

    def augment_event(self, sig: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.rirs and rng.random() < self.cfg.reverb_prob:
            sig = self.reverberate(sig, rng)
        if rng.random() < self.cfg.eq_prob:
            sig = random_eq(sig, rng)
        return sig

    def make(self, rng: np.random.Generator) -> tuple[np.ndarray, list[Event]]:
        """One scene's audio and its labelled events."""
        cfg = self.cfg
        n = int(cfg.scene_s * SAMPLE_RATE)
        if rng.random() < cfg.quiet_bed_prob:
            bed = (synth.background(cfg.scene_s, rng) * 10 ** (rng.uniform(-55, -35) / 20))[
                :n
            ].astype(np.float32)
        else:
            bed = negative_bed(self.bank.negatives, n, rng)
        n_events = int(
            rng.choice(
                len(cfg.events_per_scene),
                p=np.asarray(cfg.events_per_scene) / sum(cfg.events_per_scene),
            )
        )
        names = list(cfg.class_mix)
        probs = np.array([cfg.class_mix[c] for c in names], dtype=float)
        events: list[Event] = []
        mix = bed.copy()
        for _ in range(n_events):
            name = names[int(rng.choice(len(names), p=probs / probs.sum()))]
            sig, spans, weak = self.pick_event(name, rng)
            sig = self.augment_event(sig, rng)
            # Time shift: anywhere, allowing the event to run past the scene's end.
            at = int(rng.uniform(-0.3, 0.9) * max(n - min(sig.shape[0], n // 2), 1))
            at = max(at, -sig.shape[0] // 3)
            a, b = max(at, 0), min(at + sig.shape[0], n)
            if b - a < int(0.2 * SAMPLE_RATE):
                continue
            seg = sig[a - at : b - at]
            local_bed = _active_rms(bed[a:b]) + 1e-5
            gain = local_bed * 10 ** (rng.uniform(*cfg.ebr_db) / 20) / (_active_rms(sig) + 1e-9)
            mix[a:b] += seg * gain
            cls = CLASSES.index(name)
            for s0, s1 in spans:
                on, off = max(at / SAMPLE_RATE + s0, 0.0), min(at / SAMPLE_RATE + s1, cfg.scene_s)
                if off - on >= 0.1:
                    events.append(Event(cls, on, off, cfg.weak_event_weight if weak else 1.0, weak))
        if rng.random() < cfg.noise_prob:
            mix += (
                rng.standard_normal(n).astype(np.float32)
                * (_rms(mix) + 1e-6)
                * 10 ** (-rng.uniform(15, 40) / 20)
            )
        if rng.random() < cfg.eq_prob:
            mix = random_eq(mix, rng)
        # Overall level: from a quiet far microphone to a loud close one.
        mix = mix / (np.abs(mix).max() + 1e-9) * 10 ** (rng.uniform(-35, -1) / 20)
        return mix.astype(np.float32), events

    def labelled(self, rng: np.random.Generator) -> LabelledScene:
        audio, events = self.make(rng)
        feats = self.logmel.frames(audio)
        target, weight, spans = frame_labels(
            events, feats.shape[0], self.params, self.cfg.weak_frame_weight
        )
        return LabelledScene(feats.astype(np.float16), target, weight, spans)


# --------------------------------------------------------------------------- dev set
@dataclass
class DevItem:
    """One dev recording: features, ground-truth events (class, onset_s, offset_s), provenance."""

    name: str
    features: np.ndarray  # (T, n_mels) float32
    truth: list[tuple[str, float, float]]
    duration_s: float
    negative_only: bool
    source_clip: str = ""
    bed: tuple[BedPiece, ...] = ()  # dev scenes: the negative clips under the event


@dataclass(frozen=True)
class BedPiece:
    """A negative clip laid in a dev scene's bed: its file name, its manifest class
    (background or a confuser kind) and where it sits in the scene (seconds)."""

    clip: str
    kind: str
    start_s: float
    end_s: float


# Audio -> the rows a dev item carries: log-mel frames, or a reference scorer's scores
# frame for frame (models/reference.py).
FramesOf = Callable[[np.ndarray], np.ndarray]


def build_dev(
    bank: ClipBank,
    seed: int = 99,
    params: FeatureParams | None = None,
    reps: dict[str, int] | None = None,
    ebrs_db: Sequence[float] = (-3.0, 3.0, 9.0),
    stream_s: float = 60.0,
    frames: FramesOf | None = None,
) -> list[DevItem]:
    """Dev scenes: each real dev target placed into dev negatives at several EBRs, plus
    negative-only streams of all dev negatives (for false alarms per hour).

    `frames` turns each scene's audio into the item's rows (default: the log-mel frames);
    a reference scorer (models/reference.py) gives its scores, frame for frame, instead.

    Long recordings (the dev alarms) are cut into excerpts of at most 15 s at different
    offsets, so each repetition is a different stretch of the same real alarm.
    """
    params = params or FeatureParams()
    frames = frames or LogMel(params).frames
    rng = np.random.default_rng(seed)
    reps = reps or {"baby_cry": 1, "smoke_alarm": 6, "glass_break": 3}
    items: list[DevItem] = []
    k = 0
    for name in CLASSES:
        for audio, spans, _weak, clip in bank.targets[name]:
            for r in range(reps.get(name, 1)):
                ebr = ebrs_db[k % len(ebrs_db)]
                k += 1
                excerpt_s = 15.0
                start_s = 0.0
                if audio.shape[0] / SAMPLE_RATE > excerpt_s:
                    start_s = float(rng.uniform(0, audio.shape[0] / SAMPLE_RATE - excerpt_s))
                sig = audio[int(start_s * SAMPLE_RATE) : int((start_s + excerpt_s) * SAMPLE_RATE)]
                local = [
                    (max(a - start_s, 0.0), min(b - start_s, sig.shape[0] / SAMPLE_RATE))
                    for a, b in spans
                    if b > start_s and a < start_s + excerpt_s
                ]
                local = [(a, b) for a, b in local if b - a >= 0.1]
                if not local:
                    continue
                pre_s = float(rng.uniform(2.0, 5.0))
                total_s = pre_s + sig.shape[0] / SAMPLE_RATE + float(rng.uniform(3.0, 5.0))
                n = int(total_s * SAMPLE_RATE)
                placed: list[tuple[int, int, int, int]] = []
                bed = negative_bed(bank.negatives, n, rng, placed=placed)
                at = int(pre_s * SAMPLE_RATE)
                seg = sig[: n - at]
                gain = (
                    (_active_rms(bed[at : at + seg.shape[0]]) + 1e-5)
                    * 10 ** (ebr / 20)
                    / (_active_rms(seg) + 1e-9)
                )
                bed[at : at + seg.shape[0]] += seg * gain
                bed = bed / (np.abs(bed).max() + 1e-9) * 10 ** (rng.uniform(-20, -3) / 20)
                truth = [(name, round(pre_s + a, 3), round(pre_s + b, 3)) for a, b in local]
                items.append(
                    DevItem(
                        f"{name}:{clip.path.name}:r{r}:ebr{ebr:+.0f}",
                        frames(bed),
                        truth,
                        total_s,
                        False,
                        str(clip.path.name),
                        tuple(
                            BedPiece(
                                bank.negative_clips[i].path.name, bank.negative_clips[i].class_name,
                                round(a / SAMPLE_RATE, 3), round(b / SAMPLE_RATE, 3),
                            )
                            for i, a, b, _ in placed
                        ),
                    )
                )
    # Negative-only streams: every dev negative once, in a fixed random order.
    order = rng.permutation(len(bank.negatives))
    stream: list[np.ndarray] = []
    length = 0
    for i, idx in enumerate(order):
        clip = bank.negatives[idx]
        stream.append(
            (clip / (_active_rms(clip) + 1e-6) * 0.05 * 10 ** (rng.uniform(-10, 6) / 20)).astype(
                np.float32
            )
        )
        length += clip.shape[0]
        if length >= stream_s * SAMPLE_RATE or i == len(order) - 1:
            audio = np.concatenate(stream)
            audio = audio / (np.abs(audio).max() + 1e-9) * 0.5
            items.append(
                DevItem(
                    f"negatives:{len(items)}",
                    frames(audio),
                    [],
                    audio.shape[0] / SAMPLE_RATE,
                    True,
                )
            )
            stream, length = [], 0
    return items


def dev_summary(items: Sequence[DevItem]) -> dict[str, object]:
    """How many dev events, how many distinct real recordings they rest on, negative hours."""
    out: dict[str, object] = {}
    for name in CLASSES:
        scenes = [it for it in items if any(t[0] == name for t in it.truth)]
        out[name] = {
            "events": sum(1 for it in scenes for t in it.truth if t[0] == name),
            "distinct_recordings": len({it.source_clip for it in scenes}),
        }
    out["negative_hours"] = round(sum(it.duration_s for it in items if it.negative_only) / 3600, 3)
    out["total_hours"] = round(sum(it.duration_s for it in items) / 3600, 3)
    return out


def cache_key(*parts: object) -> str:
    """A short stable hash of JSON-able parts (configs, manifest stat) for cache folders."""
    text = json.dumps(
        [asdict(p) if hasattr(p, "__dataclass_fields__") else p for p in parts],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha1(text.encode()).hexdigest()[:12]
