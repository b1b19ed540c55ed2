"""Procedural sounds (numpy only): smoke/CO alarm patterns, cry-like and glass-like events,
domestic-like background. Used to train the provisional model, to build the bundled demo,
and by tests that need realistic-enough signals without any data set.

Alarm patterns follow the standards real detectors use: temporal-three (T3, ISO 8201 /
NFPA 72: three 0.5 s tones with 0.5 s gaps, then 1.5 s pause) for smoke, temporal-four
(T4: four 0.1 s tones 0.1 s apart, then ~5 s pause) for CO, piezo tones of ~2.9-3.6 kHz
with harmonics and drift, and the 520 Hz square-wave low-frequency alarm.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000


def _tone(freq_hz: float, duration_s: float, rng: np.random.Generator, square: bool = False,
          sr: int = SAMPLE_RATE) -> np.ndarray:
    t = np.arange(int(duration_s * sr)) / sr
    drift = 1.0 + rng.uniform(-0.01, 0.01) * t / max(duration_s, 1e-3)
    phase = 2 * np.pi * freq_hz * np.cumsum(drift) / sr
    if square:
        wave = np.sign(np.sin(phase)) * 0.8
    else:
        # Piezo sounders are far from pure: add odd and even harmonics.
        wave = np.sin(phase) + 0.3 * np.sin(2 * phase) + 0.15 * np.sin(3 * phase)
    ramp = min(len(t) // 2, int(0.004 * sr))
    if ramp:
        env = np.ones(len(t))
        env[:ramp] = np.linspace(0, 1, ramp)
        env[-ramp:] = np.linspace(1, 0, ramp)
        wave = wave * env
    return wave.astype(np.float32)


def alarm(
    pattern: str, cycles: int, rng: np.random.Generator, sr: int = SAMPLE_RATE
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """An alarm signal and its tone spans in seconds. pattern: t3 | t4 | low (520 Hz T3)."""
    if pattern not in ("t3", "t4", "low"):
        raise ValueError(f"unknown alarm pattern {pattern!r}: use t3, t4 or low")
    freq = 520.0 if pattern == "low" else rng.uniform(2900.0, 3600.0)
    on_s, gap_s, beeps, pause_s = (0.1, 0.1, 4, 5.0) if pattern == "t4" else (0.5, 0.5, 3, 1.5)
    parts: list[np.ndarray] = []
    spans: list[tuple[float, float]] = []
    t = 0.0
    for _ in range(cycles):
        for b in range(beeps):
            tone = _tone(freq, on_s, rng, square=pattern == "low", sr=sr)
            parts.append(tone)
            spans.append((t, t + on_s))
            t += on_s
            gap = pause_s if b == beeps - 1 else gap_s
            parts.append(np.zeros(int(gap * sr), dtype=np.float32))
            t += gap
    return np.concatenate(parts), spans


def cry(duration_s: float, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A cry-like sound: voiced bursts (f0 350-600 Hz, rich harmonics, vibrato) with breaths."""
    out: list[np.ndarray] = []
    total = 0.0
    while total < duration_s:
        burst_s = rng.uniform(0.6, 1.4)
        n = int(burst_s * sr)
        t = np.arange(n) / sr
        f0 = rng.uniform(350, 600) * (1 + 0.15 * np.sin(np.pi * t / burst_s))
        f0 *= 1 + 0.02 * np.sin(2 * np.pi * rng.uniform(5, 8) * t)
        phase = 2 * np.pi * np.cumsum(f0) / sr
        wave = sum((0.8**k) * np.sin((k + 1) * phase) for k in range(8))
        env = np.sin(np.pi * t / burst_s) ** 0.5
        wave = wave * env * (1 + 0.1 * rng.standard_normal(n))
        out.append(wave.astype(np.float32))
        pause = np.zeros(int(rng.uniform(0.15, 0.4) * sr), dtype=np.float32)
        out.append(pause)
        total += burst_s + len(pause) / sr
    sig = np.concatenate(out)[: int(duration_s * sr)]
    return (sig / (np.abs(sig).max() + 1e-9)).astype(np.float32)


def glass(rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A glass-break-like sound: a sharp broadband crash, then ringing high partials and shards."""
    duration_s = rng.uniform(0.8, 1.6)
    n = int(duration_s * sr)
    t = np.arange(n) / sr
    crash = rng.standard_normal(n) * np.exp(-t / rng.uniform(0.03, 0.08))
    ring = np.zeros(n)
    for _ in range(12):
        f = rng.uniform(2500, 7500)
        ring += rng.uniform(0.2, 1.0) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.28)) * np.exp(
            -t / rng.uniform(0.05, 0.4)
        )
    shards = np.zeros(n)
    for _ in range(int(rng.integers(4, 12))):
        at = int(rng.uniform(0.05, duration_s * 0.9) * sr)
        length = int(0.01 * sr)
        seg = rng.standard_normal(min(length, n - at)) * rng.uniform(0.2, 0.6)
        shards[at : at + len(seg)] += seg
    sig = crash + 0.5 * ring + shards
    return (sig / (np.abs(sig).max() + 1e-9)).astype(np.float32)


def background(duration_s: float, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A domestic-like bed: coloured noise, mains hum, and now and then a door or a voice-like
    formant burst or a short beep, so that 'anything loud' is not a target."""
    n = int(duration_s * sr)
    white = rng.standard_normal(n)
    spectrum = np.fft.rfft(white)
    freqs = np.fft.rfftfreq(n, 1 / sr)
    spectrum /= np.maximum(freqs, 20.0) ** rng.uniform(0.5, 1.0)
    bed = np.fft.irfft(spectrum, n)
    bed /= np.abs(bed).max() + 1e-9
    t = np.arange(n) / sr
    bed += 0.05 * np.sin(2 * np.pi * rng.choice([50.0, 60.0]) * t)
    for _ in range(int(duration_s / 3)):
        at = int(rng.uniform(0, max(duration_s - 1.0, 0.01)) * sr)
        kind = rng.integers(0, 3)
        if kind == 0:  # a door knock: low thump
            length = int(0.15 * sr)
            tt = np.arange(length) / sr
            seg = np.sin(2 * np.pi * 90 * tt) * np.exp(-tt / 0.03)
        elif kind == 1:  # a voice-like formant burst
            length = int(rng.uniform(0.3, 0.9) * sr)
            tt = np.arange(length) / sr
            f0 = rng.uniform(100, 220)
            seg = sum(np.sin(2 * np.pi * f0 * (k + 1) * tt) / (k + 1) for k in range(6))
            seg *= np.sin(np.pi * tt / tt[-1])
        else:  # an appliance beep at an alarm-unlike pitch and rhythm
            length = int(0.2 * sr)
            tt = np.arange(length) / sr
            seg = np.sin(2 * np.pi * rng.uniform(800, 2000) * tt)
        length = min(length, n - at)
        bed[at : at + length] += rng.uniform(0.3, 1.0) * seg[:length]
    return (bed / (np.abs(bed).max() + 1e-9)).astype(np.float32)


#: The kinds of game-like effect `effect` makes (model card, fifty-second round).
EFFECT_KINDS = ("sweep", "blips", "impact", "creature", "engine", "whoosh")


def _shaped(noise: np.ndarray, centres_hz: np.ndarray, widths_hz: np.ndarray, sr: int) -> np.ndarray:
    """`noise` (or any source) through resonances: a sum of Gaussian bumps on its spectrum."""
    spectrum = np.fft.rfft(noise)
    freqs = np.fft.rfftfreq(noise.shape[0], 1 / sr)
    gain = np.zeros_like(freqs)
    for centre, width in zip(centres_hz, widths_hz, strict=True):
        gain += np.exp(-0.5 * ((freqs - centre) / width) ** 2)
    return np.fft.irfft(spectrum * gain, noise.shape[0])


def effect(kind: str, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A game-like sound effect of one kind (`EFFECT_KINDS`), peak-normalised, 0.05-2 s.

    Why: game and UI effects lead the false cries on the dev negatives while the train
    negatives hold only 0.63 h of them; these are the effects' common shapes, none of them a
    cry's train of 0.6-1.4 s voiced sobs at 350-600 Hz:
    sweep (laser, power-up: a harmonic tone gliding over octaves), blips (chiptune pickups and
    menus: short square notes), impact (hits, explosions, footsteps: a decaying noise burst
    over a low thump), creature (growls and moans: a low voiced source, 70-250 Hz, through
    formants), engine (a sawtooth hum with a throttle), whoosh (a band of noise that swells).
    """
    if kind == "sweep":
        duration = rng.uniform(0.1, 1.0)
        t = np.arange(int(duration * sr)) / sr
        f_start, f_end = np.exp(rng.uniform(np.log(150), np.log(4000), size=2))
        freq = f_start * (f_end / f_start) ** (t / duration)
        phase = 2 * np.pi * np.cumsum(freq) / sr
        n_harm = int(rng.integers(1, 5))
        wave = sum((0.6**k) * np.sin((k + 1) * phase) for k in range(n_harm))
        wave = wave * np.exp(-t / rng.uniform(0.1, 2.0))
    elif kind == "blips":
        notes = []
        base = rng.uniform(300, 1500)
        for _ in range(int(rng.integers(2, 9))):
            length = int(rng.uniform(0.04, 0.15) * sr)
            tt = np.arange(length) / sr
            freq = base * 2 ** (int(rng.integers(-5, 13)) / 12)
            notes.append(np.sign(np.sin(2 * np.pi * freq * tt)) * np.exp(-tt / rng.uniform(0.03, 0.3)))
            notes.append(np.zeros(int(rng.uniform(0.0, 0.05) * sr)))
        wave = np.concatenate(notes)
    elif kind == "impact":
        duration = rng.uniform(0.1, 1.5)
        t = np.arange(int(duration * sr)) / sr
        decay = np.exp(-t / rng.uniform(0.02, duration / 3))
        noise = rng.standard_normal(t.shape[0])
        cutoff = rng.uniform(500, 6000)  # a dull thud to a sharp crack
        burst = _shaped(noise, np.array([0.0]), np.array([cutoff]), sr) * decay
        thump = np.sin(2 * np.pi * rng.uniform(40, 120) * t) * np.exp(-t / rng.uniform(0.03, 0.2))
        wave = burst / (np.abs(burst).max() + 1e-9) + rng.uniform(0.0, 1.0) * thump
    elif kind == "creature":
        duration = rng.uniform(0.3, 1.8)
        t = np.arange(int(duration * sr)) / sr
        # Under 250 Hz (a glide of 30 % at most keeps it under 325): below a cry's 350-600 Hz.
        f0 = rng.uniform(70, 250) * (1 + rng.uniform(-0.3, 0.3) * t / duration)
        f0 = f0 * (1 + rng.uniform(0.0, 0.05) * np.sin(2 * np.pi * rng.uniform(3, 25) * t))
        phase = 2 * np.pi * np.cumsum(f0) / sr
        source = sum(np.sin((k + 1) * phase) / (k + 1) for k in range(20))
        source = source + rng.uniform(0.0, 1.5) * rng.standard_normal(t.shape[0])  # rasp
        formants = np.sort(rng.uniform(250, 3500, size=3))
        wave = _shaped(source, formants, formants * rng.uniform(0.05, 0.2), sr)
        wave = wave * np.sin(np.pi * t / duration) ** 0.5
    elif kind == "engine":
        duration = rng.uniform(0.5, 2.0)
        t = np.arange(int(duration * sr)) / sr
        throttle = 1 + rng.uniform(-0.5, 1.0) * np.clip(t / (duration * rng.uniform(0.3, 1.0)), 0, 1)
        phase = 2 * np.pi * np.cumsum(rng.uniform(25, 150) * throttle) / sr
        saw = 2 * ((phase / (2 * np.pi)) % 1.0) - 1
        wave = saw * (1 + 0.3 * np.sin(2 * np.pi * rng.uniform(4, 15) * t))
        wave = wave + 0.3 * rng.standard_normal(t.shape[0])
        ramp = np.minimum(1.0, np.minimum(t, duration - t) / 0.05)
        wave = wave * ramp
    elif kind == "whoosh":
        duration = rng.uniform(0.2, 1.2)
        t = np.arange(int(duration * sr)) / sr
        centre = rng.uniform(300, 5000)
        width = centre * rng.uniform(0.2, 0.6)
        wave = _shaped(rng.standard_normal(t.shape[0]), np.array([centre]), np.array([width]), sr)
        wave = wave * np.sin(np.pi * t / duration) ** rng.uniform(1.0, 3.0)
    else:
        raise ValueError(f"unknown effect kind {kind!r} (kinds: {', '.join(EFFECT_KINDS)})")
    wave = np.asarray(wave, dtype=np.float64)
    return (wave / (np.abs(wave).max() + 1e-9)).astype(np.float32)


def mix_at_snr(bed: np.ndarray, event: np.ndarray, at: int, snr_db: float) -> None:
    """Add `event` into `bed` at sample `at` with the given event-to-background ratio (in place)."""
    end = min(len(bed), at + len(event))
    seg = event[: end - at]
    active = np.abs(seg) > 1e-4
    event_rms = np.sqrt(np.mean(seg[active] ** 2)) if active.any() else 0.0
    bed_rms = np.sqrt(np.mean(bed**2)) + 1e-9
    if event_rms > 0:
        bed[at:end] += seg * (bed_rms * 10 ** (snr_db / 20) / event_rms)
