"""Audio sources: every input becomes 16 kHz mono float32; bad input gives one clear error."""

from __future__ import annotations

import asyncio
import functools
import http.server
import io
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from service.audio.sources import (
    AudioSource,
    SourceError,
    iter_stdin,
    parse_source_url,
    read_audio,
)
from tests.conftest import require_program

RATE = 16000


def tone(seconds: float, rate: int, freq: float = 1000.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.5 * np.sin(2 * np.pi * freq * t)
    return np.stack([mono] * channels, axis=1) if channels > 1 else mono


def dominant_hz(audio: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(audio))
    return float(np.argmax(spectrum) * RATE / audio.size)


@pytest.mark.parametrize(
    ("rate", "channels", "subtype", "name"),
    [(16000, 1, "PCM_16", "a.wav"), (44100, 2, "PCM_24", "b.wav"), (48000, 8, "FLOAT", "c.wav"),
     (192000, 1, "PCM_32", "d.wav"), (22050, 1, "PCM_16", "e.flac"), (32000, 2, "VORBIS", "f.ogg")],
)
def test_files_of_any_rate_width_and_channel_count_become_16k_mono(
    tmp_path: Path, rate: int, channels: int, subtype: str, name: str
) -> None:
    path = tmp_path / name
    sf.write(str(path), tone(2.0, rate, channels=channels), rate, subtype=subtype)
    audio = read_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(audio.size - 2 * RATE) < 200
    assert abs(dominant_hz(audio) - 1000) < 2
    assert 0.3 < np.abs(audio).max() < 0.6


def test_other_formats_go_through_ffmpeg(tmp_path: Path) -> None:
    ffmpeg = require_program("ffmpeg")
    wav = tmp_path / "in.wav"
    sf.write(str(wav), tone(2.0, 44100), 44100)
    mp3 = tmp_path / "in.mp3"
    subprocess.run([ffmpeg, "-loglevel", "error", "-i", str(wav), str(mp3)], check=True, timeout=60)
    audio = read_audio(mp3)
    assert abs(audio.size - 2 * RATE) < 0.1 * RATE
    assert abs(dominant_hz(audio) - 1000) < 2


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b""), "not a WAV/FLAC/OGG|ffmpeg could not decode|contains no audio"),
        (
            lambda p: p.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage" * 3),
            "not a WAV/FLAC/OGG|ffmpeg could not decode",
        ),
        (lambda p: p.mkdir(), "not a regular file"),
    ],
    ids=["missing", "empty", "corrupt", "directory"],
)
def test_unreadable_files_give_one_clear_error_naming_the_file(
    tmp_path: Path, make: Callable[[Path], object], message: str
) -> None:
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(SourceError, match=message) as info:
        read_audio(path)
    assert "bad.wav" in str(info.value)
    assert "\n" not in str(info.value)


def test_zero_samples_and_non_finite_samples(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, np.float32), RATE)
    with pytest.raises(SourceError, match="contains no audio"):
        read_audio(empty)
    nan = tmp_path / "nan.wav"
    data = tone(1.0, RATE).astype(np.float32)
    data[100:200] = np.nan
    data[300] = np.inf
    sf.write(str(nan), data, RATE, subtype="FLOAT")
    audio = read_audio(nan)
    assert np.isfinite(audio).all()
    assert "101 NaN/inf samples replaced" in caplog.text


def test_truncated_file_is_read_up_to_where_it_breaks(tmp_path: Path) -> None:
    path = tmp_path / "cut.wav"
    sf.write(str(path), tone(2.0, RATE), RATE)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    audio = read_audio(path)
    assert 0.5 * RATE < audio.size <= 2 * RATE


def _pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def test_stdin_raw_pcm_and_wav_streams() -> None:
    audio = np.concatenate(list(iter_stdin(io.BytesIO(_pcm16(tone(1.0, RATE))))))
    assert audio.size == RATE and abs(dominant_hz(audio) - 1000) < 2
    buffer = io.BytesIO()
    sf.write(buffer, tone(1.0, 48000, channels=2), 48000, format="WAV", subtype="PCM_16")
    audio = np.concatenate(list(iter_stdin(io.BytesIO(buffer.getvalue()))))
    assert abs(audio.size - RATE) < 100 and abs(dominant_hz(audio) - 1000) < 2


def test_stdin_wav_with_a_bad_header_is_refused() -> None:
    with pytest.raises(SourceError, match="not a WAV stream"):
        list(iter_stdin(io.BytesIO(b"RIFF\x00\x00\x00\x00JUNKJUNK")))


@pytest.mark.parametrize(
    ("url", "kind", "target"),
    [("mic", "mic", None), ("mic:2", "mic", "2"), ("mic:USB Audio", "mic", "USB Audio"), ("demo", "demo", None),
     ("-", "stdin", None), ("file:/a/b.wav", "file", "/a/b.wav"), ("url:rtsp://cam/live", "url", "rtsp://cam/live"),
     ("http://radio/stream", "url", "http://radio/stream")],
)
def test_source_urls(url: str, kind: str, target: str | None) -> None:
    spec = parse_source_url(url)
    assert (spec.kind, spec.target) == (kind, target)


@pytest.mark.parametrize("url", ["speaker", "file:", "mic:", "ftp://x"])
def test_bad_source_urls_say_what_is_accepted(url: str) -> None:
    with pytest.raises(ValueError, match=r"mic|path|device"):
        parse_source_url(url)


@pytest.fixture
def http_audio(tmp_path: Path) -> Iterator[str]:
    path = tmp_path / "stream.wav"
    sf.write(str(path), tone(3.0, 44100, freq=2000.0), 44100)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *a: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/stream.wav"
    server.shutdown()
    server.server_close()


async def _collect(source: AudioSource, limit_s: float = 10.0) -> tuple[np.ndarray, Exception | None]:
    blocks: list[np.ndarray] = []
    error: Exception | None = None

    async def consume() -> None:
        async for block in source.blocks():
            blocks.append(block)

    try:
        await asyncio.wait_for(consume(), timeout=limit_s)
    except SourceError as exc:
        error = exc
    return (np.concatenate(blocks) if blocks else np.zeros(0, np.float32)), error


def test_network_stream_through_ffmpeg_then_a_retryable_end(http_audio: str) -> None:
    require_program("ffmpeg")
    audio, error = asyncio.run(_collect(AudioSource("cam", f"url:{http_audio}")))
    assert abs(audio.size - 3 * RATE) < 0.05 * RATE
    assert abs(dominant_hz(audio) - 2000) < 2
    assert isinstance(error, SourceError) and error.retryable  # a live stream that ends may come back


def test_broken_stream_url_is_a_retryable_error() -> None:
    require_program("ffmpeg")
    _audio, error = asyncio.run(_collect(AudioSource("cam", "url:http://127.0.0.1:9/none.wav")))
    assert isinstance(error, SourceError) and error.retryable
    assert "127.0.0.1:9" in str(error)


def test_file_source_as_fast_as_possible(tmp_path: Path) -> None:
    path = tmp_path / "x.wav"
    sf.write(str(path), tone(5.0, RATE), RATE)
    source = AudioSource("f", f"file:{path}", realtime=False)
    audio, error = asyncio.run(_collect(source, limit_s=5.0))
    assert error is None and audio.size == 5 * RATE
    assert source.status.samples == 5 * RATE


def test_a_header_declaring_a_huge_length_reads_what_is_there(tmp_path: Path) -> None:
    path = tmp_path / "liar.wav"
    sf.write(str(path), tone(1.0, RATE), RATE, subtype="PCM_16")
    raw = bytearray(path.read_bytes())
    data_at = raw.index(b"data")
    raw[data_at + 4 : data_at + 8] = (0xFFFFFFF0).to_bytes(4, "little")  # "4 GB of samples follow"
    raw[4:8] = (0xFFFFFFF8).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    try:
        audio = read_audio(path)
    except SourceError as exc:  # refusing is fine too, as long as it says why
        assert "liar.wav" in str(exc)
    else:
        assert audio.size <= RATE + 100
