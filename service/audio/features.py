"""Log-mel features: the one implementation shared by the daemon, training and evaluation.

Frames are cut from the start of the stream without centre padding, so a stream can be
fed in chunks of any size and yields exactly the frames a single batch pass yields.
Work is done in large vectorised blocks (strided views, one batched real FFT, a sparse
mel projection); nothing here loops over frames in Python.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import scipy.fft
import scipy.sparse

FEATURE_VERSION = "logmel-v1"
#: Added to mel power before the log: about -138 dBFS, below any real microphone's noise.
LOG_FLOOR = 1e-6
#: Frames per vectorised block: big enough to amortise numpy overhead, small enough to stay
#: in cache (measured: 512 is ~1.5x faster than 2048 here).
_BLOCK_FRAMES = 512


@dataclass(frozen=True)
class FeatureParams:
    """Parameters of the log-mel front end; stored in the model contract."""

    sample_rate: int = 16000
    win_samples: int = 512  # 32 ms analysis window
    hop_samples: int = 320  # 20 ms between frames: the model's and the decisions' time step
    n_fft: int = 512
    n_mels: int = 64
    fmin_hz: float = 60.0
    fmax_hz: float = 7800.0
    version: str = FEATURE_VERSION

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> FeatureParams:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)  # type: ignore[arg-type]

    @property
    def hop_s(self) -> float:
        return self.hop_samples / self.sample_rate

    def frame_center_s(self, frame_index: int | np.ndarray) -> float | np.ndarray:
        """Audio time of the centre of frame `frame_index`, counted from the stream start."""
        return (np.asarray(frame_index) * self.hop_samples + self.win_samples / 2) / self.sample_rate

    def frames_in(self, n_samples: int) -> int:
        """Number of complete frames in a signal of `n_samples` samples."""
        if n_samples < self.win_samples:
            return 0
        return (n_samples - self.win_samples) // self.hop_samples + 1


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(params: FeatureParams) -> np.ndarray:
    """Triangular HTK-style mel filters, shape (n_mels, n_fft // 2 + 1), unit peak."""
    n_bins = params.n_fft // 2 + 1
    bin_hz = np.linspace(0.0, params.sample_rate / 2, n_bins)
    edges_mel = np.linspace(
        _hz_to_mel(np.array(params.fmin_hz)), _hz_to_mel(np.array(params.fmax_hz)), params.n_mels + 2
    )
    edges_hz = _mel_to_hz(edges_mel)
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bin_hz[None, :] - lower) / (centre - lower)
    falling = (upper - bin_hz[None, :]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    # Low mel bands can be narrower than one FFT bin; give each at least its nearest bin
    # so that no band is identically zero.
    for band in range(params.n_mels):
        if not weights[band].any():
            weights[band, int(np.argmin(np.abs(bin_hz - centre[band, 0])))] = 1.0
    return weights.astype(np.float32)


class LogMel:
    """Stateless batch log-mel of a whole signal: (n_samples,) float32 -> (frames, n_mels)."""

    def __init__(self, params: FeatureParams | None = None) -> None:
        self.params = params or FeatureParams()
        p = self.params
        self._window = np.hanning(p.win_samples + 1)[:-1].astype(np.float32)
        # Each FFT bin feeds at most two mel bands: a sparse product is ~30x cheaper than dense.
        # Columns are duplicated so the filters apply to the interleaved (re, im) float view of
        # the spectrum: squaring that view in place gives re^2 and im^2 without temporaries.
        self._mel_interleaved = scipy.sparse.csr_matrix(np.repeat(mel_filterbank(p), 2, axis=1))  # (n_mels, 2*bins)

    def frames(self, samples: np.ndarray) -> np.ndarray:
        """Log-mel of every complete frame of `samples`; shape (frames, n_mels), float32."""
        p = self.params
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        n_frames = p.frames_in(samples.shape[0])
        out = np.empty((n_frames, p.n_mels), dtype=np.float32)
        if n_frames == 0:
            return out
        step = samples.strides[0]
        framed = np.lib.stride_tricks.as_strided(
            samples, shape=(n_frames, p.win_samples), strides=(step * p.hop_samples, step), writeable=False
        )  # (frames, win)
        for start in range(0, n_frames, _BLOCK_FRAMES):
            block = framed[start : start + _BLOCK_FRAMES] * self._window
            spectrum = scipy.fft.rfft(block, n=p.n_fft, axis=1, overwrite_x=True)  # (b, bins) complex64
            parts = spectrum.view(np.float32)  # (b, 2 * bins): re, im, re, im, ...
            np.square(parts, out=parts)
            mel = (self._mel_interleaved @ parts.T).T  # (b, n_mels)
            np.log(mel + LOG_FLOOR, out=out[start : start + block.shape[0]])
        return out

    @property
    def silence_frame(self) -> np.ndarray:
        """The feature vector of digital silence; used to pad the start and end of a stream."""
        return np.full(self.params.n_mels, np.log(LOG_FLOOR), dtype=np.float32)


class StreamingLogMel:
    """Log-mel over a stream fed in chunks of any size; equals `LogMel.frames` on the whole."""

    def __init__(self, params: FeatureParams | None = None) -> None:
        self._batch = LogMel(params)
        self.params = self._batch.params
        self._pending = np.zeros(0, dtype=np.float32)
        self.frames_emitted = 0

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Feed samples; return the frames completed by them, shape (frames, n_mels)."""
        p = self.params
        buffer = np.concatenate([self._pending, np.asarray(chunk, dtype=np.float32)])
        n_frames = p.frames_in(buffer.shape[0])
        frames = self._batch.frames(buffer)  # only complete frames, (n_frames, n_mels)
        self._pending = buffer[n_frames * p.hop_samples :].copy()
        self.frames_emitted += n_frames
        return frames

    def reset(self) -> None:
        self._pending = np.zeros(0, dtype=np.float32)
        self.frames_emitted = 0


def level_dbfs(samples: np.ndarray) -> float:
    """RMS level of a block in dB relative to full scale; -120 for silence or empty input."""
    if samples.size == 0:
        return -120.0
    mean_square = float(np.mean(np.square(samples, dtype=np.float64)))
    if not mean_square > 1e-12:  # also catches NaN
        return -120.0
    return max(-120.0, 10.0 * np.log10(mean_square) + 3.0103)  # +3 dB: full-scale sine = 0 dBFS
