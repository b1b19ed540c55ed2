"""Training scenes made on the fly: a new random scene for every crop of every step.

A fixed cache of a few thousand scenes lets a network memorise its backgrounds; hours of
varied negatives only help when every step sees new ones. Each scene here is exactly one
training crop (plus the network's context), built in the audio domain and turned into
features by the daemon's own `LogMel`:

* a **background** from the Debian negatives (speech, music, game sound, ambience;
  `models.negatives.NegativePool`), the household confusers of the shared data set
  (dishes, keys, doors, beeps, alarm clocks...), both mixed, or a quiet room;
* **0-3 target events**, overlapping allowed, at an event-to-background ratio of about
  -10..+15 dB, with room reverb (distance through the simulated room), microphone EQ;
* **hard negatives** (after a mining round): windows of negative audio on which an
  earlier model fired, mixed in more often than chance would;
* stream **edges**: a dropout to digital zeros or a faint floor (a camera stream that
  drops, a muted microphone), and crops that start at a stream's first frame, padded as
  `service.detector` pads (the first frame repeated), so that neither a stream's start
  nor sound after a gap looks like an onset the network has never seen;
* **lossy codecs** (AAC, Opus, MP3 at 16-64 kbit/s through FFmpeg's libraries (PyAV), as camera streams
  arrive), an overall level from a far quiet microphone to a loud close one, and now and
  then clipping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.fft

from models import augment, synth
from models.data import (
    CLASSES,
    SAMPLE_RATE,
    ClipBank,
    Event,
    SceneConfig,
    SceneMaker,
    _active_rms,
    change_speed,
    frame_labels,
    negative_bed,
    onset_anchor_frames,
)
from models.negatives import NegativePool
from models.teacher import ClipTeacher, TeacherTrack
from service.audio.features import FeatureParams, _hz_to_mel, _mel_to_hz


def mel_band_edges_hz(params: FeatureParams) -> np.ndarray:
    """The n_mels + 2 edges of the log-mel bands (centres are edges[1:-1])."""
    lo, hi = _hz_to_mel(np.array(params.fmin_hz)), _hz_to_mel(np.array(params.fmax_hz))
    return _mel_to_hz(np.linspace(lo, hi, params.n_mels + 2))


@dataclass
class LiveSceneConfig:
    """The `live:` section of a training config: what each on-the-fly scene may contain."""

    #: Train on live scenes (otherwise the cached fixed scenes of `data:`).
    enabled: bool = False

    events_per_scene: tuple[float, ...] = (0.3, 0.4, 0.2, 0.1)  # P(0), P(1), P(2), P(3) events
    ebr_db: tuple[float, float] = (-10.0, 15.0)
    #: Background kinds and their probabilities.
    bed: dict[str, float] = field(
        default_factory=lambda: {"negatives": 0.4, "confusers": 0.25, "both": 0.25, "quiet": 0.1}
    )
    codec_prob: float = 0.05
    gap_prob: float = 0.12
    stream_start_prob: float = 0.08
    overdrive_prob: float = 0.05
    peak_dbfs: tuple[float, float] = (-45.0, -1.0)
    #: How a scene's level is set. "peak": the whole mix is scaled to a random peak level
    #: (recipes up to run B; it ties quiet backgrounds to the presence of an event, since an
    #: event-free scene is scaled up: those networks fired on quiet rooms). "absolute": the
    #: background gets a random level of its own, events sit at the EBR over it but never
    #: below `event_min_dbfs` (an alarm in a quiet room is loud), so quiet rooms occur with
    #: and without events alike.
    level: str = "peak"
    bed_rms_dbfs: tuple[float, float] = (-62.0, -15.0)
    quiet_rms_dbfs: tuple[float, float] = (-80.0, -45.0)
    event_min_dbfs: tuple[float, float] = (-45.0, -25.0)
    #: Probability that a scene's background carries one mined hard-negative window.
    hard_negative_prob: float = 0.0
    #: Household confusers on which a mining round saw reports are picked this many times
    #: more often per report (at most 5 reports count) for confuser backgrounds.
    hard_confuser_weight: float = 0.0
    #: Mined windows of these classes are drawn this many times as often as the others,
    #: e.g. {smoke_alarm: 8.0}: a class whose false alarms are a small share of what was
    #: mined (S2s: 111 alarm windows of 1328) is otherwise barely shown to the network.
    hard_negative_class_weight: dict[str, float] = field(default_factory=dict)
    #: Negative beds drawn with each kind of the negatives pool weighing this many times its
    #: hours (1 for kinds not named), e.g. {confuser_effects: 6.0, confuser_ambience: 6.0}:
    #: by time alone the train beds are 83 % music, the kind the networks are already quiet on.
    negative_kind_weights: dict[str, float] = field(default_factory=dict)
    #: Probability that a scene's background (any but a quiet room) carries procedural
    #: game-like effects (`models.synth.effect`: sweeps, blips, impacts, creatures, engines,
    #: whooshes), `procedural_effects_count` of them at `procedural_effects_db` over the bed.
    #: At 0 nothing is drawn, so recipes without it keep their scenes to the sample.
    procedural_effects_prob: float = 0.0
    procedural_effects_count: tuple[int, int] = (1, 4)
    procedural_effects_db: tuple[float, float] = (-6.0, 10.0)
    #: Probability that a background (any but a quiet room) starts late: a steady room floor
    #: (`late_start_floor_db` under the bed's level) until a point in the crop's middle 80 %,
    #: then the bed fading in over 10-50 ms. Without it only target events ever begin after a
    #: quiet stretch, and the networks learnt that a sound beginning is a target (model card,
    #: fifty-second round, question 7). At 0 nothing is drawn.
    late_start_prob: float = 0.0
    late_start_floor_db: tuple[float, float] = (-50.0, -25.0)
    #: Probability that a scene also holds `distractor_events_count` household confuser or
    #: background clips placed as its targets are placed (anywhere in the crop, augmented
    #: alike, at the events' levels over the bed, quiet rooms included) and left unlabelled.
    #: Without it every short sound standing out of a bed is a target, and the networks
    #: fire on short confuser clips played after quiet (model card, fifty-third round). At
    #: 0 nothing is drawn.
    distractor_events_prob: float = 0.0
    distractor_events_count: tuple[int, int] = (1, 2)
    #: Per class, its own `ebr_db` and `event_min_dbfs` in place of the scene-wide ones, e.g.
    #: {glass_break: {ebr_db: [-10, 5], event_min_dbfs: [-60, -40]}}: a class's events over
    #: louder beds than the rest (the same draws of the generator, other ranges).
    class_levels: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    #: Household confuser beds played this many times as fast, drawn per bed from [low, high]
    #: (pitch and length together, as `data.speed` plays events), and the share of them put
    #: in one of the simulated rooms (`data.n_rirs`): a kind recorded by a dozen people in
    #: train sounds like more of them. [1, 1] and 0: off (the random stream as before).
    confuser_bed_speed: tuple[float, float] = (1.0, 1.0)
    confuser_bed_reverb_prob: float = 0.0
    #: Frequency masking (SpecAugment's, on the scene's log-mel frames): in this share of
    #: scenes, `freq_masks` bands of up to `freq_mask_bands` mel bands each are flattened to
    #: their median over the crop, so the event's pattern there is gone as under a bed that
    #: covers those bands. 0: off (the random stream as before).
    freq_mask_prob: float = 0.0
    freq_masks: int = 2
    freq_mask_bands: int = 8

    def event_level_ranges(self, name: str) -> tuple[tuple[float, float], tuple[float, float]]:
        """The EBR range and absolute level floor range of `name`'s events."""
        own = self.class_levels.get(name, {})
        return tuple(own.get("ebr_db", self.ebr_db)), tuple(own.get("event_min_dbfs", self.event_min_dbfs))

    def __post_init__(self) -> None:
        for name, own in self.class_levels.items():
            if name not in CLASSES:
                raise ValueError(f"live.class_levels: unknown class {name!r} (classes: {', '.join(CLASSES)})")
            unknown = sorted(set(own) - {"ebr_db", "event_min_dbfs"})
            if unknown:
                raise ValueError(f"live.class_levels.{name}: unknown key(s) {', '.join(unknown)} "
                                 "(known: ebr_db, event_min_dbfs)")
            for key, pair in own.items():
                if len(pair) != 2 or float(pair[0]) > float(pair[1]):
                    raise ValueError(f"live.class_levels.{name}.{key}: a [low, high] pair in dB, got {list(pair)}")
        speed = [float(x) for x in self.confuser_bed_speed]
        if len(speed) != 2 or not 0.5 <= speed[0] <= speed[1] <= 2.0:
            raise ValueError(f"live.confuser_bed_speed: a [low, high] pair of speed factors within 0.5..2.0, "
                             f"got {list(self.confuser_bed_speed)}")
        if not 0.0 <= self.confuser_bed_reverb_prob <= 1.0:
            raise ValueError(f"live.confuser_bed_reverb_prob must be in [0, 1], got {self.confuser_bed_reverb_prob}")
        if not 0.0 <= self.freq_mask_prob <= 1.0:
            raise ValueError(f"live.freq_mask_prob must be in [0, 1], got {self.freq_mask_prob}")
        if not 0.0 <= self.procedural_effects_prob <= 1.0:
            raise ValueError(f"live.procedural_effects_prob must be in [0, 1], got {self.procedural_effects_prob}")
        count = list(self.procedural_effects_count)
        if len(count) != 2 or int(count[0]) != count[0] or int(count[1]) != count[1] or not 1 <= count[0] <= count[1]:
            raise ValueError(f"live.procedural_effects_count: a [low, high] pair of whole numbers, 1 <= low <= high, "
                             f"got {count}")
        level = [float(x) for x in self.procedural_effects_db]
        if len(level) != 2 or level[0] > level[1]:
            raise ValueError(f"live.procedural_effects_db: a [low, high] pair in dB, "
                             f"got {list(self.procedural_effects_db)}")
        if not 0.0 <= self.late_start_prob <= 1.0:
            raise ValueError(f"live.late_start_prob must be in [0, 1], got {self.late_start_prob}")
        floor = [float(x) for x in self.late_start_floor_db]
        if len(floor) != 2 or floor[0] > floor[1] or floor[1] > 0:
            raise ValueError(f"live.late_start_floor_db: a [low, high] pair of dB at or under 0, "
                             f"got {list(self.late_start_floor_db)}")
        if not 0.0 <= self.distractor_events_prob <= 1.0:
            raise ValueError(f"live.distractor_events_prob must be in [0, 1], got {self.distractor_events_prob}")
        count = [int(x) for x in self.distractor_events_count]
        if len(count) != 2 or not 1 <= count[0] <= count[1]:
            raise ValueError(f"live.distractor_events_count: a [low, high] pair of counts from 1, "
                             f"got {list(self.distractor_events_count)}")
        if self.freq_masks < 1 or self.freq_mask_bands < 1:
            raise ValueError(f"live.freq_masks and live.freq_mask_bands must be >= 1, got {self.freq_masks} "
                             f"and {self.freq_mask_bands}")


@dataclass(frozen=True)
class BedOrigin:
    """What a scene's background was made of, as far as the teacher can describe it: a
    plain stretch of the negatives pool from `pool_start`, or a plain confuser bed laid
    from `pieces` (clip index, first sample, end sample, the clip's own sample at the
    first); neither for quiet rooms, mixed beds and beds with a mined window laid in."""

    pool_start: int | None = None
    pieces: tuple[tuple[int, int, int, int], ...] = ()


@dataclass
class LiveScene:
    """One crop's input frames and labels, aligned to the network's output frames."""

    features: np.ndarray  # (crop + receptive_field, n_mels) float32
    target: np.ndarray  # (crop, C) uint8
    weight: np.ndarray  # (crop, C) float32
    events: list[tuple[int, int, int, float]]  # (class, first, end, weight) in output frames
    onsets: list[tuple[int, int, int, float]]  # the events whose labelled start is in the crop
    #: With a teacher: its scores of the background per output frame (crop, K), and where
    #: they hold (crop,) (plain stretches of the negatives and, with a confuser teacher,
    #: beds of household confusers, outside dropouts): bool, or each frame's weight in the
    #: term (float32) where confuser frames weigh other than 1.
    teacher: np.ndarray | None = None
    teacher_mask: np.ndarray | None = None


def steady_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Stationary noise with a random spectral tilt (amplitude ~ f^-a, a in 0..1.2: white,
    pink, brown) and, half the time, 50/60 Hz mains hum: a fridge, a fan, a quiet
    microphone's own noise. Unit peak, float32."""
    n_fft = scipy.fft.next_fast_len(n, real=True)
    spectrum = scipy.fft.rfft(rng.standard_normal(n_fft))
    freqs = np.fft.rfftfreq(n_fft, 1 / SAMPLE_RATE)
    spectrum /= np.maximum(freqs, 20.0) ** rng.uniform(0.0, 1.2)
    noise = scipy.fft.irfft(spectrum, n_fft)[:n]
    noise /= np.abs(noise).max() + 1e-9
    if rng.random() < 0.5:
        t = np.arange(n) / SAMPLE_RATE
        mains = rng.choice([50.0, 60.0])
        noise += rng.uniform(0.02, 0.3) * (np.sin(2 * np.pi * mains * t) + 0.3 * np.sin(4 * np.pi * mains * t))
    return (noise / (np.abs(noise).max() + 1e-9)).astype(np.float32)


class LiveSceneMaker:
    """Random scenes of a fixed crop length; pure numpy, seeded by the caller's generator."""

    def __init__(
        self,
        bank: ClipBank,
        negatives: NegativePool | None,
        scene_cfg: SceneConfig,
        live_cfg: LiveSceneConfig,
        crop_frames: int,
        receptive_field: int,
        lookahead: int,
        params: FeatureParams | None = None,
        hard_negatives: Sequence[tuple[int, int]] = (),
        confuser_reports: Sequence[int] = (),
        teacher: TeacherTrack | None = None,
        hard_negative_classes: Sequence[str] = (),
        confuser_teacher: ClipTeacher | None = None,
        teacher_beds: Sequence[str] = ("negatives",),
        confuser_teacher_weight: float = 1.0,
    ) -> None:
        self.maker = SceneMaker(bank, scene_cfg, params)
        self.bank, self.negatives = bank, negatives
        self.scene_cfg, self.cfg = scene_cfg, live_cfg
        self.params = self.maker.params
        self.crop, self.rf, self.lookahead = crop_frames, receptive_field, lookahead
        self.context = receptive_field - lookahead
        self.n_frames = crop_frames + receptive_field
        self.n_samples = (self.n_frames - 1) * self.params.hop_samples + self.params.win_samples
        self.hard_negatives = list(hard_negatives)  # (start sample, length) in `negatives`
        self.negative_chunk_p = (
            negatives.chunk_probabilities(live_cfg.negative_kind_weights)
            if negatives is not None and live_cfg.negative_kind_weights
            else None
        )
        self.hard_weights = self._hard_weights(live_cfg.hard_negative_class_weight, hard_negative_classes)
        # Mined confusers (reports per clip of `bank.negatives`) weigh more in confuser beds.
        self.confuser_weights: np.ndarray | None = None
        if len(confuser_reports) and live_cfg.hard_confuser_weight > 0:
            if len(confuser_reports) != len(bank.negatives):
                raise ValueError(
                    f"confuser_reports has {len(confuser_reports)} entries for {len(bank.negatives)} confuser clips"
                )
            w = 1.0 + live_cfg.hard_confuser_weight * np.minimum(np.asarray(confuser_reports, dtype=float), 5)
            self.confuser_weights = w / w.sum()
        if live_cfg.confuser_bed_reverb_prob > 0 and not self.maker.rirs:
            raise ValueError("live.confuser_bed_reverb_prob needs the simulated rooms: data.reverb_prob and "
                             "data.n_rirs must be above 0")
        # `teacher_beds` (loss.teacher_beds): the pool's track is needed for its terms even
        # where only confuser beds carry the teacher.
        if confuser_teacher is not None:
            if teacher is None:
                raise ValueError("a confuser teacher needs the pool's teacher track beside it (its rows' basis "
                                 "and the scenes' teacher arrays come from the track)")
            if confuser_teacher.n_classes != teacher.n_classes:
                raise ValueError(f"the confuser teacher has {confuser_teacher.n_classes} components, the pool's "
                                 f"track {teacher.n_classes}: one head learns both")
        if teacher is not None and ("confusers" in teacher_beds) != (confuser_teacher is not None):
            raise ValueError("teacher beds 'confusers' and a confuser teacher go together")
        self.teacher, self.confuser_teacher = teacher, confuser_teacher
        self.teacher_on_pool = "negatives" in teacher_beds
        self.confuser_teacher_weight = confuser_teacher_weight
        self.codec_ok = augment.codec_available()
        edges = mel_band_edges_hz(self.params)
        self.mel_centres_hz = edges[1:-1]

    def _hard_weights(self, by_class: dict[str, float], classes: Sequence[str]) -> np.ndarray | None:
        """Draw probabilities of the mined windows from the class each was reported as."""
        unknown = sorted(set(by_class) - set(CLASSES))
        if unknown:
            raise ValueError(f"live.hard_negative_class_weight: unknown class(es) {unknown} (classes: {list(CLASSES)})")
        if not by_class or not self.hard_negatives:
            return None  # uniform draws, exactly as before the option existed
        if len(classes) != len(self.hard_negatives):
            raise ValueError(
                f"live.hard_negative_class_weight needs the class of each mined window: "
                f"{len(classes)} classes for {len(self.hard_negatives)} windows "
                "(mine again with this version of `harken mine`)"
            )
        w = np.array([by_class.get(c, 1.0) for c in classes], dtype=float)
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"live.hard_negative_class_weight must be >= 0 with some > 0, got {by_class}")
        return w / w.sum()

    # ------------------------------------------------------------------ background
    def _bed(self, rng: np.random.Generator) -> tuple[np.ndarray, str, BedOrigin]:
        """The background, its kind, and what the teacher can describe of it: where it
        starts in the negatives pool when it is a plain stretch of it, or the confuser
        pieces it was laid from when it is a plain confuser bed."""
        n = self.n_samples
        kinds = list(self.cfg.bed)
        probs = np.array([self.cfg.bed[k] for k in kinds], dtype=float)
        kind = kinds[int(rng.choice(len(kinds), p=probs / probs.sum()))]
        if kind != "quiet" and self.negatives is None:
            kind = "confusers"
        if kind == "quiet":
            # Half the time a steady room (white to brown noise, maybe hum, nothing else).
            steady = rng.random() < 0.5
            quiet = steady_noise(n, rng) if steady else synth.background(n / SAMPLE_RATE + 0.1, rng)[:n]
            return (quiet * 10 ** (rng.uniform(-60, -35) / 20)).astype(np.float32), kind, BedOrigin()
        parts = []
        origin = BedOrigin()
        if kind in ("negatives", "both"):
            assert self.negatives is not None
            excerpt, start = self.negatives.excerpt_at(n, rng, self.negative_chunk_p)
            origin = BedOrigin(pool_start=start) if kind == "negatives" else origin
            parts.append(excerpt / (_active_rms(excerpt) + 1e-6) * 0.05)
        if kind in ("confusers", "both"):
            bed, pieces = self._confuser_bed(n, rng)
            if kind == "confusers" and pieces is not None:
                origin = BedOrigin(pieces=tuple(pieces))
            gain = 10 ** (rng.uniform(-12, 6) / 20) if kind == "both" else 1.0
            parts.append(bed / (_active_rms(bed) + 1e-6) * 0.05 * gain)
        bed = np.sum(parts, axis=0).astype(np.float32)
        if self.hard_negatives and self.negatives is not None and rng.random() < self.cfg.hard_negative_prob:
            pick = (
                int(rng.integers(len(self.hard_negatives)))
                if self.hard_weights is None
                else int(rng.choice(len(self.hard_negatives), p=self.hard_weights))
            )
            start, length = self.hard_negatives[pick]
            seg = self.negatives.samples(start, start + min(length, n))
            at = int(rng.integers(0, max(1, n - seg.shape[0])))
            loud = 10 ** (rng.uniform(-6, 10) / 20) * (_active_rms(bed) + 1e-6) / (_active_rms(seg) + 1e-6)
            bed[at : at + seg.shape[0]] += seg * loud
            origin = BedOrigin()  # the teacher never heard the mined window in this bed
        if self.cfg.procedural_effects_prob > 0 and rng.random() < self.cfg.procedural_effects_prob:
            self._lay_effects(bed, rng)
            origin = BedOrigin()  # nor the effects
        if self.cfg.late_start_prob > 0 and rng.random() < self.cfg.late_start_prob:
            bed = self._start_late(bed, rng)
            origin = BedOrigin()  # the teacher's rows describe the bed from its first sample
        return bed, kind, origin

    def _start_late(self, bed: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """`bed` silent but for a steady room floor until a point in the crop's middle 80 %,
        then fading in (10-50 ms): a sound that is not a target beginning in a quiet room."""
        n = bed.shape[0]
        start = int(rng.uniform(0.1, 0.9) * n)
        fade = int(rng.uniform(0.01, 0.05) * SAMPLE_RATE)
        gain = np.ones(n, dtype=np.float32)
        gain[:start] = 0.0
        gain[start : start + fade] = np.linspace(0.0, 1.0, min(fade, n - start), dtype=np.float32)
        floor_db = rng.uniform(*self.cfg.late_start_floor_db)
        room = steady_noise(n, rng)
        floor = room * np.float32(10 ** (floor_db / 20) * (_active_rms(bed) + 1e-6) / (_active_rms(room) + 1e-9))
        return (bed * gain + floor).astype(np.float32)

    def _lay_effects(self, bed: np.ndarray, rng: np.random.Generator) -> None:
        """Procedural game-like effects added into `bed` (in place), each at its own level
        over the bed's, anywhere in it (cut where it runs off the end)."""
        low, high = (int(x) for x in self.cfg.procedural_effects_count)
        reference = _active_rms(bed) + 1e-6
        for _ in range(int(rng.integers(low, high + 1))):
            sound = synth.effect(synth.EFFECT_KINDS[int(rng.integers(len(synth.EFFECT_KINDS)))], rng)
            at = int(rng.integers(0, bed.shape[0]))
            seg = sound[: bed.shape[0] - at]
            gain = 10 ** (rng.uniform(*self.cfg.procedural_effects_db) / 20) * reference / (_active_rms(sound) + 1e-6)
            bed[at : at + seg.shape[0]] += seg * gain

    def _confuser_bed(
        self, n: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, list[tuple[int, int, int, int]] | None]:
        """`n` samples of household confusers, at another speed and in a simulated room
        where `live.confuser_bed_speed` and `live.confuser_bed_reverb_prob` ask for them,
        and the pieces it was laid from (`data.negative_bed`) when it is neither: the
        teacher's rows of the clips describe only the clips as recorded."""
        low, high = self.cfg.confuser_bed_speed
        pieces: list[tuple[int, int, int, int]] | None = []
        if (low, high) == (1.0, 1.0):
            bed = negative_bed(self.bank.negatives, n, rng, self.confuser_weights, placed=pieces)
        else:
            factor = float(rng.uniform(low, high))
            laid = negative_bed(self.bank.negatives, int(np.ceil(n * factor)) + 8, rng, self.confuser_weights)
            bed, pieces = change_speed(laid, [], factor)[0], None
        if self.cfg.confuser_bed_reverb_prob > 0 and rng.random() < self.cfg.confuser_bed_reverb_prob:
            bed, pieces = self.maker.reverberate(bed, rng), None
        return np.pad(bed[:n], (0, max(0, n - bed.shape[0]))).astype(np.float32), pieces

    # ------------------------------------------------------------------ scene
    def _place(self, sig: np.ndarray, mix: np.ndarray, bed: np.ndarray, rng: np.random.Generator,
               ebr_range: Sequence[float], floor_range: Sequence[float]) -> int | None:
        """Add `sig` into `mix` (in place) as an event: its onset anywhere in the crop (and
        some before it, a sound already going on), at an EBR in `ebr_range` over `bed` there
        and, with level "absolute", at least a level in `floor_range`. Returns the onset in
        samples, or None when less than 0.15 s of it falls in the crop (nothing added)."""
        n = mix.shape[0]
        at = int(rng.uniform(-0.25, 0.95) * n)
        at = max(at, -sig.shape[0] // 2)
        a, b = max(at, 0), min(at + sig.shape[0], n)
        if b - a < int(0.15 * SAMPLE_RATE):
            return None
        level = (_active_rms(bed[a:b]) + 1e-5) * 10 ** (rng.uniform(*ebr_range) / 20)
        if self.cfg.level == "absolute":
            level = max(level, 10 ** (rng.uniform(*floor_range) / 20))
        mix[a:b] += sig[a - at : b - at] * (level / (_active_rms(sig) + 1e-9))
        return at

    def make(self, rng: np.random.Generator) -> LiveScene:
        cfg, n = self.cfg, self.n_samples
        bed, bed_kind, origin = self._bed(rng)
        absolute = cfg.level == "absolute"
        if absolute:
            rms_range = cfg.quiet_rms_dbfs if bed_kind == "quiet" else cfg.bed_rms_dbfs
            bed = (bed * 10 ** (rng.uniform(*rms_range) / 20) / (_active_rms(bed) + 1e-9)).astype(np.float32)
        mix = bed.copy()
        events: list[Event] = []
        probs = np.asarray(cfg.events_per_scene, dtype=float)
        n_events = int(rng.choice(len(probs), p=probs / probs.sum()))
        names = list(self.scene_cfg.class_mix)
        class_p = np.array([self.scene_cfg.class_mix[c] for c in names], dtype=float)
        for _ in range(n_events):
            name = names[int(rng.choice(len(names), p=class_p / class_p.sum()))]
            sig, spans, anchors, weak = self.maker.pick_event_anchored(name, rng)
            sig = self.maker.augment_event(sig, rng)
            at = self._place(sig, mix, bed, rng, *cfg.event_level_ranges(name))
            if at is None:
                continue
            cls = CLASSES.index(name)
            for (s0, s1), anchor in zip(spans, anchors, strict=True):
                on, off = at / SAMPLE_RATE + s0, min(at / SAMPLE_RATE + s1, n / SAMPLE_RATE)
                if off - max(on, 0.0) >= 0.1:
                    w = self.scene_cfg.weak_event_weight if weak else 1.0
                    events.append(Event(cls, on, off, w, weak, at / SAMPLE_RATE + anchor))
        if cfg.distractor_events_prob > 0 and self.bank.negatives and rng.random() < cfg.distractor_events_prob:
            low, high = (int(x) for x in cfg.distractor_events_count)
            for _ in range(int(rng.integers(low, high + 1))):
                clip = self.bank.negatives[int(rng.integers(len(self.bank.negatives)))]
                self._place(self.maker.augment_event(clip, rng), mix, bed, rng, cfg.ebr_db, cfg.event_min_dbfs)
            origin = BedOrigin()  # the teacher's rows describe the bed without them
        if rng.random() < self.scene_cfg.noise_prob:
            noise_db = -rng.uniform(15, 40)
            mix += rng.standard_normal(n).astype(np.float32) * (_active_rms(mix) + 1e-6) * 10 ** (noise_db / 20)
        mix_eq = rng.random() < self.scene_cfg.eq_prob
        overdrive = rng.uniform(3, 12) if rng.random() < cfg.overdrive_prob else 0.0
        if not absolute:
            mix = augment.set_level(mix, rng.uniform(*cfg.peak_dbfs), overdrive)
        elif overdrive > 0 and np.abs(mix).max() > 0.25:
            # Only a loud scene overdrives a microphone (clipping), never a quiet room.
            mix = augment.set_level(mix, 0.0, overdrive)
        elif np.abs(mix).max() > 0.99:  # a loud scene: the microphone's limiter, not clipping
            mix = augment.set_level(mix, -0.1)
        if self.codec_ok and rng.random() < cfg.codec_prob:
            mix = augment.random_codec(mix, rng)
        gap: tuple[int, int] | None = None
        if rng.random() < cfg.gap_prob:
            mix, gap = augment.silence_gap(mix, rng)
        feats = self.maker.logmel.frames(mix)[: self.n_frames]  # (n_frames, n_mels)
        if mix_eq:  # the microphone's response, on everything it hears
            feats = augment.mel_eq(feats, self.mel_centres_hz, rng)
        if cfg.freq_mask_prob > 0 and rng.random() < cfg.freq_mask_prob:
            feats = augment.freq_mask(feats, rng, cfg.freq_masks, cfg.freq_mask_bands)
        if rng.random() < cfg.stream_start_prob:
            # The first `context` frames are what service.detector puts before a stream.
            feats[: self.context] = feats[self.context]
        target, weight, spans = frame_labels(events, feats.shape[0], self.params, self.scene_cfg.weak_frame_weight)
        centres = np.asarray(self.params.frame_center_s(np.arange(feats.shape[0]))) * SAMPLE_RATE
        in_gap = np.zeros(feats.shape[0], dtype=bool)
        if gap is not None:
            # Nothing is audible in a dropout: its frames are negatives for every class.
            in_gap = (centres >= gap[0]) & (centres < gap[1])
            target[in_gap] = 0
        # Output frame j belongs to input frame j + context.
        lo, hi = self.context, self.context + self.crop
        teacher = teacher_mask = None
        if self.teacher is not None:
            teacher = np.zeros((self.crop, self.teacher.n_classes), dtype=np.float16)
            teacher_mask = np.zeros(self.crop, dtype=bool)
            if origin.pool_start is not None and self.teacher_on_pool:
                teacher = self.teacher.frames(origin.pool_start, centres[lo:hi])
                teacher_mask = ~in_gap[lo:hi]
            elif origin.pieces and self.confuser_teacher is not None:
                teacher, held = self.confuser_teacher.frames(origin.pieces, centres[lo:hi])
                teacher_mask = held & ~in_gap[lo:hi]
                if self.confuser_teacher_weight != 1.0:  # a weight per frame, not a mask
                    teacher_mask = teacher_mask * np.float32(self.confuser_teacher_weight)
        target, weight = target[lo:hi], weight[lo:hi].astype(np.float32)
        out_events, onsets = [], []
        anchors = onset_anchor_frames(events, feats.shape[0], self.params)
        for (c, first, end, w), anchor in zip(spans, anchors, strict=True):
            f, e = max(first, lo) - lo, min(end, hi) - lo
            if e - f < 5 or target[f:e, c].sum() < 3:
                continue
            out_events.append((c, f, e, w))
            # Weak clips (weight below 1) have no trustworthy onset; the onset term's window
            # starts at the event's anchor (its label unless data.voiced_onset_classes moves it;
            # none when the anchor lies past the crop).
            if lo <= first < hi and w >= 1.0 and anchor < hi:
                onsets.append((c, anchor - lo, e, w))
        return LiveScene(feats, target, weight, out_events, onsets, teacher, teacher_mask)
