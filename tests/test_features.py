"""Log-mel features: streaming equals batch, pinned values, level."""

from __future__ import annotations

import numpy as np
import pytest

from service.audio.features import (
    FEATURE_VERSION,
    FeatureParams,
    LogMel,
    StreamingLogMel,
    level_dbfs,
    mel_filterbank,
)

GOLDEN_BANDS_19_23 = [-13.816, 9.085, 9.622, 6.49, -13.816]


def _signal(seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * 3100 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.mark.parametrize("chunk", [1, 160, 1023, 16000])
def test_streaming_in_any_chunk_size_equals_one_batch_pass(chunk: int) -> None:
    audio = _signal()
    batch = LogMel().frames(audio)
    stream = StreamingLogMel()
    pieces = [stream.push(audio[i : i + chunk]) for i in range(0, audio.size, chunk)]
    streamed = np.concatenate(pieces)
    assert streamed.shape == batch.shape == (FeatureParams().frames_in(audio.size), 64)
    np.testing.assert_allclose(streamed, batch, rtol=0, atol=1e-4)
    assert stream.frames_emitted == batch.shape[0]


def test_golden_values_pin_the_feature_definition() -> None:
    """A full-scale 1 kHz sine: pinned numbers catch any silent change of the front end."""
    t = np.arange(16000) / 16000
    frames = LogMel().frames(np.sin(2 * np.pi * 1000 * t).astype(np.float32))
    assert frames.shape == (49, 64)
    peak_band = int(np.argmax(frames[10]))
    assert peak_band == 21
    assert frames[10, peak_band] == pytest.approx(9.622, abs=0.01)
    np.testing.assert_allclose(frames[10, 19:24], GOLDEN_BANDS_19_23, atol=0.01)
    assert frames[10, 0] < -13.0  # far from the tone: nothing but the floor
    assert FEATURE_VERSION == "logmel-v1"


def test_silence_gives_the_floor_and_short_input_no_frames() -> None:
    logmel = LogMel()
    assert logmel.frames(np.zeros(100, np.float32)).shape == (0, 64)
    silent = logmel.frames(np.zeros(16000, np.float32))
    np.testing.assert_allclose(silent, np.tile(logmel.silence_frame, (silent.shape[0], 1)))


def test_every_mel_band_sees_some_frequency() -> None:
    bank = mel_filterbank(FeatureParams())
    assert bank.shape == (64, 257)
    assert (bank.max(axis=1) > 0).all()


def test_level_dbfs() -> None:
    t = np.arange(16000) / 16000
    assert level_dbfs(np.sin(2 * np.pi * 440 * t)) == pytest.approx(0.0, abs=0.01)
    assert level_dbfs(0.1 * np.sin(2 * np.pi * 440 * t)) == pytest.approx(-20.0, abs=0.01)
    assert level_dbfs(np.zeros(100)) == -120.0
    assert level_dbfs(np.zeros(0)) == -120.0


def test_params_round_trip_and_frame_times() -> None:
    params = FeatureParams()
    assert FeatureParams.from_dict(params.to_dict()) == params
    assert params.hop_s == 0.02
    assert params.frame_center_s(0) == pytest.approx(0.016)
    assert params.frames_in(511) == 0 and params.frames_in(512) == 1 and params.frames_in(832) == 2
