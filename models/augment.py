"""Signal-level augmentation that the scene builders share: codecs, gaps, level and clipping.

Room reverb and microphone EQ live in `models.data` (`simulated_rirs`, `random_eq`).
"""

from __future__ import annotations

import io
import logging

import numpy as np

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000

#: (encoder, container, decoder delay in samples at 16 kHz) per codec a camera stream or
#: phone might use. The delays were measured on noise (AAC primes 1024 samples).
CODECS: dict[str, tuple[str, str, int]] = {
    "aac": ("aac", "adts", 1024),
    "opus": ("libopus", "ogg", 0),
    "mp3": ("libmp3lame", "mp3", 0),
}
BITRATES_KBPS = (16, 24, 32, 48, 64)


def codec_available() -> bool:
    """PyAV (FFmpeg's libraries in-process: no process start per scene) is installed."""
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def codec_roundtrip(audio: np.ndarray, codec: str, kbps: int) -> np.ndarray:
    """Encode with a lossy codec at `kbps` and decode again: 16 kHz mono float32, same length,
    re-aligned for the codec's priming delay. Raises ValueError for an unknown codec."""
    import av

    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r} (known: {', '.join(CODECS)})")
    encoder, container, delay = CODECS[codec]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        # Opus runs at 48 kHz; PyAV resamples the 16 kHz frame for it.
        stream = out.add_stream(encoder, rate=48000 if encoder == "libopus" else SAMPLE_RATE)
        stream.bit_rate = kbps * 1000
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(audio, dtype=np.float32)[None, :], format="flt", layout="mono"
        )
        frame.sample_rate = SAMPLE_RATE
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    buffer.seek(0)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    pieces = []
    with av.open(buffer, "r") as inp:
        for decoded in inp.decode(audio=0):
            pieces.extend(r.to_ndarray()[0] for r in resampler.resample(decoded))
        pieces.extend(r.to_ndarray()[0] for r in resampler.resample(None))
    out_audio = np.concatenate(pieces)[delay:] if pieces else np.zeros(0, np.float32)
    n = audio.shape[0]
    if out_audio.shape[0] < n:
        out_audio = np.concatenate([out_audio, np.zeros(n - out_audio.shape[0], dtype=np.float32)])
    return out_audio[:n].astype(np.float32)


def random_codec(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random codec and bitrate; the input unchanged (logged) when the codec fails."""
    codec = str(rng.choice(list(CODECS)))
    kbps = int(rng.choice(BITRATES_KBPS))
    try:
        return codec_roundtrip(audio, codec, kbps)
    except Exception as exc:  # pragma: no cover - PyAV raises its own error types
        log.warning("codec augmentation skipped (%s %d kbit/s): %s", codec, kbps, exc)
        return audio


def silence_gap(
    audio: np.ndarray, rng: np.random.Generator, min_s: float = 0.3, max_s: float = 4.0
) -> tuple[np.ndarray, tuple[int, int]]:
    """Cut a gap into the signal, as a camera stream that drops out or a muted microphone:
    digital zeros (half the time) or a faint noise floor. Returns the audio and the gap
    (first sample, end sample)."""
    n = audio.shape[0]
    length = int(rng.uniform(min_s, max_s) * SAMPLE_RATE)
    start = int(rng.integers(0, max(1, n - length // 2)))
    end = min(n, start + length)
    out = audio.copy()
    if rng.random() < 0.5:
        out[start:end] = 0.0
    else:
        out[start:end] = rng.standard_normal(end - start).astype(np.float32) * 10 ** (rng.uniform(-90, -60) / 20)
    return out, (start, end)


def set_level(audio: np.ndarray, peak_dbfs: float, overdrive_db: float = 0.0) -> np.ndarray:
    """Scale to a peak level; with `overdrive_db` > 0, drive that far past full scale and
    hard-clip, as a cheap microphone next to a smoke alarm does."""
    peak = float(np.abs(audio).max()) + 1e-9
    out = audio / peak * 10 ** ((peak_dbfs + overdrive_db) / 20)
    if overdrive_db > 0:
        out = np.clip(out, -1.0, 1.0)
    return out.astype(np.float32)


def freq_mask(features: np.ndarray, rng: np.random.Generator, masks: int, max_bands: int) -> np.ndarray:
    """SpecAugment's frequency masking on log-mel frames (T, n_mels): `masks` times, a run of
    1..`max_bands` bands is set to each band's median over the frames. The median, not zero
    or the floor, keeps the band's level (a steady bed there), and takes away what changes
    in it: an event's pattern in those bands is gone, as under a bed that covers them."""
    out = features.copy()
    n_mels = out.shape[1]
    for _ in range(masks):
        width = int(rng.integers(1, min(max_bands, n_mels) + 1))
        first = int(rng.integers(0, n_mels - width + 1))
        out[:, first : first + width] = np.median(out[:, first : first + width], axis=0)
    return out


def mel_eq(
    features: np.ndarray, mel_centres_hz: np.ndarray, rng: np.random.Generator, phone_prob: float = 0.15
) -> np.ndarray:
    """A random smooth microphone response (+-6 dB), or sometimes a phone band, applied to
    log-mel frames (T, n_mels): a smooth gain is a per-band factor on mel power, so this is
    what `models.data.random_eq` does to the audio, for a fraction of the cost. The log
    floor is respected (a quiet band cannot fall below digital silence)."""
    from models.data import random_eq_curve_db
    from service.audio.features import LOG_FLOOR

    curve_db = random_eq_curve_db(mel_centres_hz, rng, phone_prob)
    power = np.maximum(np.exp(features.astype(np.float64)) - LOG_FLOOR, 0.0)
    return np.log(power * 10 ** (curve_db / 10) + LOG_FLOOR).astype(np.float32)
