"""Audio sources: microphone, files, stdin PCM, network/camera streams and the demo.

Every source yields float32 blocks of 16 kHz mono audio, whatever the device or file
delivers. Failures raise `SourceError` with one clear line; the pipeline decides whether
to retry (microphones and streams come back) or to stop (a broken file does not).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

log = logging.getLogger(__name__)

TARGET_RATE = 16000
#: Block length delivered by file, stdin and ffmpeg sources.
BLOCK_S = 0.1
#: At most this many samples (all channels together) are read from a file at once, whatever
#: block length is asked for: 60 s of 8-channel 192 kHz audio would otherwise be 370 MB.
MAX_READ_SAMPLES = 2_000_000
#: Sample rates outside this range are not recordings but broken or hostile headers
#: (a file claiming 1 Hz would be "upsampled" into days of audio).
MIN_RATE_HZ = 1000
MAX_RATE_HZ = 768_000
DEMO_PATH = Path(__file__).resolve().parent.parent / "assets" / "demo.flac"

SourceKind = Literal["mic", "file", "stdin", "url", "demo"]


class SourceError(RuntimeError):
    """A source cannot deliver audio. `retryable` says whether it may come back."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class SourceSpec:
    kind: SourceKind
    target: str | None = None


def parse_source_url(url: str) -> SourceSpec:
    """mic | mic:NAME_OR_INDEX | file:PATH | demo | - | url:rtsp://… (also bare http(s)/rtsp)."""
    url = url.strip()
    if url == "mic":
        return SourceSpec("mic")
    if url.startswith("mic:"):
        if not url[4:]:
            raise ValueError("source 'mic:' needs a device name or index, e.g. mic:2 or mic:USB")
        return SourceSpec("mic", url[4:])
    if url == "demo":
        return SourceSpec("demo")
    if url == "-":
        return SourceSpec("stdin")
    if url.startswith("file:"):
        if not url[5:]:
            raise ValueError("source 'file:' needs a path, e.g. file:/recordings/kitchen.wav")
        return SourceSpec("file", url[5:])
    if url.startswith("url:"):
        url = url[4:]
    if url.split("://", 1)[0] in ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt"):
        return SourceSpec("url", url)
    raise ValueError(
        f"unknown source {url!r}: use mic, mic:NAME_OR_INDEX, file:PATH, demo, - (stdin) or url:rtsp://…"
    )


# ------------------------------------------------------------------ conversion


class MonoResampler:
    """Any rate and channel count -> 16 kHz mono float32, stateful across blocks."""

    def __init__(self, in_rate: int, channels: int) -> None:
        if in_rate <= 0:
            raise SourceError(f"invalid sample rate {in_rate}")
        self.in_rate = in_rate
        self.channels = channels
        self._stream = None
        if in_rate != TARGET_RATE:
            import soxr

            self._stream = soxr.ResampleStream(in_rate, TARGET_RATE, 1, dtype="float32", quality="HQ")
        self.non_finite_samples = 0
        self.clipped_samples = 0
        self.samples_seen = 0
        self.peak = 0.0

    def convert(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        data = np.asarray(block, dtype=np.float32)
        if data.ndim == 2:
            data = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
        # One BLAS pass instead of a boolean array: only if the sum of squares is not finite
        # (NaN/inf present, or absurd magnitudes) do we look sample by sample.
        if not np.isfinite(np.dot(data, data)) and not np.isfinite(data).all():
            bad = ~np.isfinite(data)
            self.non_finite_samples += int(bad.sum())
            data = np.where(bad, np.float32(0.0), data)
        if data.size:
            peak = float(np.max(np.abs(data)))
            self.peak = max(self.peak, peak)
            if peak >= 0.999:
                self.clipped_samples += int(np.count_nonzero(np.abs(data) >= 0.999))
            self.samples_seen += data.size
        if self._stream is not None:
            data = self._stream.resample_chunk(data, last=last)
        return np.ascontiguousarray(data, dtype=np.float32)


def pcm_to_float(raw: bytes, sample_width: int, is_float: bool = False) -> np.ndarray:
    """Little-endian interleaved PCM bytes -> float32 in [-1, 1]."""
    if is_float:
        if sample_width == 4:
            return np.frombuffer(raw, dtype="<f4").astype(np.float32)
        return np.frombuffer(raw, dtype="<f8").astype(np.float32)
    if sample_width == 2:
        return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    if sample_width == 4:
        return (np.frombuffer(raw, dtype="<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
    if sample_width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        values = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        values = np.where(values & 0x800000, values - 0x1000000, values)
        return (values / 8388608.0).astype(np.float32)
    if sample_width == 1:
        return (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    raise SourceError(f"unsupported PCM sample width {sample_width} bytes")


# ------------------------------------------------------------------ files


def _ffmpeg() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        raise SourceError("ffmpeg is not installed; it is needed for this format or stream "
                          "(Debian/Ubuntu: apt install ffmpeg)")
    return path


def _ffmpeg_command(target: str, is_network: bool) -> list[str]:
    cmd = [_ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error"]
    if is_network and target.startswith("rtsp"):
        cmd += ["-rtsp_transport", "tcp"]
    if is_network:
        cmd += ["-rw_timeout", "10000000"]  # 10 s without data: give up, we reconnect
    return [*cmd, "-i", target, "-vn", "-f", "s16le", "-ac", "1", "-ar", str(TARGET_RATE), "-"]


def iter_ffmpeg(target: str, is_network: bool, block_s: float = BLOCK_S) -> Iterator[np.ndarray]:
    """Decode anything ffmpeg reads into 16 kHz mono blocks (blocking)."""
    proc = subprocess.Popen(
        _ffmpeg_command(target, is_network), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    block_bytes = int(block_s * TARGET_RATE) * 2
    total = 0
    try:
        while True:
            raw = proc.stdout.read(block_bytes)
            if not raw:
                break
            raw = raw[: len(raw) // 2 * 2]
            total += len(raw)
            yield pcm_to_float(raw, 2)
        code = proc.wait(timeout=10)
        if code != 0:
            err = proc.stderr.read().decode("utf-8", "replace").strip().splitlines()
            detail = err[-1] if err else f"exit status {code}"
            raise SourceError(f"ffmpeg could not decode {target}: {detail}", retryable=is_network)
        if total == 0 and not is_network:
            raise SourceError(f"{target}: contains no audio")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def iter_file(path: str | Path, block_s: float = BLOCK_S) -> Iterator[np.ndarray]:
    """Decode a file into 16 kHz mono float32 blocks: soundfile first, ffmpeg for the rest."""
    import soundfile as sf

    file_path = Path(path)
    if not file_path.exists():
        raise SourceError(f"{file_path}: no such file")
    if not file_path.is_file():
        raise SourceError(f"{file_path}: not a regular file")
    try:
        handle = sf.SoundFile(str(file_path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        if shutil.which("ffmpeg") is None:
            raise SourceError(
                f"{file_path}: not a WAV/FLAC/OGG file soundfile can read ({exc}); "
                "install ffmpeg for other formats"
            ) from None
        yield from iter_ffmpeg(str(file_path), is_network=False, block_s=block_s)
        return
    except OSError as exc:
        raise SourceError(f"{file_path}: cannot read ({exc.strerror or exc})") from None
    with handle:
        if handle.frames == 0:
            raise SourceError(f"{file_path}: contains no audio (0 samples)")
        if handle.channels > 64:
            raise SourceError(f"{file_path}: {handle.channels} channels is not a plausible recording")
        if not MIN_RATE_HZ <= handle.samplerate <= MAX_RATE_HZ:
            raise SourceError(
                f"{file_path}: a sample rate of {handle.samplerate} Hz is not plausible "
                f"(accepted: {MIN_RATE_HZ}-{MAX_RATE_HZ} Hz); is the header broken?"
            )
        converter = MonoResampler(handle.samplerate, handle.channels)
        block_frames = max(1, min(int(block_s * handle.samplerate), MAX_READ_SAMPLES // handle.channels))
        # 16-bit files: reading int16 and scaling in numpy is ~2x faster than libsndfile's
        # per-sample float conversion, and gives the same values.
        as_int16 = handle.subtype in ("PCM_16", "PCM_S8", "PCM_U8")
        delivered = 0
        while True:
            try:
                if as_int16:
                    data = handle.read(block_frames, dtype="int16", always_2d=True).astype(np.float32)
                    data *= np.float32(1 / 32768)
                else:
                    data = handle.read(block_frames, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise SourceError(f"{file_path}: corrupt audio after {delivered} samples ({exc})") from None
            last = data.shape[0] < block_frames
            out = converter.convert(data, last=last)
            delivered += data.shape[0]
            if out.size:
                yield out
            if last:
                break
        if delivered == 0:
            raise SourceError(f"{file_path}: contains no audio")
        report_signal_problems(str(file_path), converter)


def report_signal_problems(name: str, converter: MonoResampler) -> None:
    """One warning line per problem of a finished signal: NaN/inf, clipping, digital silence."""
    if converter.non_finite_samples:
        log.warning("%s: %d NaN/inf samples replaced by silence", name, converter.non_finite_samples)
    if converter.samples_seen and converter.clipped_samples > 0.001 * converter.samples_seen:
        log.warning("%s: %.1f%% of samples are clipped at full scale; lower the input gain (detections may suffer)",
                    name, 100 * converter.clipped_samples / converter.samples_seen)
    if converter.samples_seen and converter.peak == 0.0:
        log.warning("%s: the signal is digital silence (all samples are zero)", name)


def read_audio(path: str | Path) -> np.ndarray:
    """A whole file as 16 kHz mono float32."""
    blocks = list(iter_file(path, block_s=30.0))
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)


# ------------------------------------------------------------------ stdin


def parse_wav_header(stream: BinaryIO) -> tuple[int, int, int, bool]:
    """Read a streamed WAV header up to the data chunk: (rate, channels, width, is_float)."""
    riff = stream.read(12)
    if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
        raise SourceError("stdin: data starts with RIFF but is not a WAV stream")
    fmt: tuple[int, int, int, bool] | None = None
    while True:
        header = stream.read(8)
        if len(header) < 8:
            raise SourceError("stdin: WAV stream ended before its data chunk")
        chunk_id, size = header[:4], struct.unpack("<I", header[4:])[0]
        if chunk_id == b"data":
            if fmt is None:
                raise SourceError("stdin: WAV data chunk before its fmt chunk")
            return fmt
        body = stream.read(size + (size & 1))
        if chunk_id == b"fmt ":
            tag, channels, rate = struct.unpack("<HHI", body[:8])
            bits = struct.unpack("<H", body[14:16])[0]
            if tag == 0xFFFE and len(body) >= 26:  # WAVE_FORMAT_EXTENSIBLE: real tag in the GUID
                tag = struct.unpack("<H", body[24:26])[0]
            if tag not in (1, 3):
                raise SourceError(f"stdin: WAV format tag {tag} is not PCM or float")
            if channels < 1 or rate < 1000 or bits not in (8, 16, 24, 32, 64):
                raise SourceError(f"stdin: implausible WAV format ({channels} ch, {rate} Hz, {bits} bit)")
            fmt = (rate, channels, bits // 8, tag == 3)


def iter_stdin(stream: BinaryIO | None = None, block_s: float = BLOCK_S) -> Iterator[np.ndarray]:
    """Raw s16le 16 kHz mono PCM on stdin, or a WAV stream (detected by its RIFF header)."""
    if stream is None:
        # A reader of our own on a copy of fd 0, not sys.stdin: the read may block in a daemon
        # thread at exit, and Python aborts if it must lock sys.stdin's buffer then.
        stream = open(os.dup(sys.stdin.fileno()), "rb")  # noqa: SIM115 (lives as long as the read)
    head = stream.read(4)
    rate, channels, width, is_float = TARGET_RATE, 1, 2, False
    pending = b""
    if head == b"RIFF":
        class _Prefixed:
            def __init__(self) -> None:
                self.first = head

            def read(self, n: int) -> bytes:
                if self.first:
                    data, self.first = self.first[:n], self.first[n:]
                    return data + stream.read(n - len(data)) if len(data) < n else data
                return stream.read(n)

        rate, channels, width, is_float = parse_wav_header(_Prefixed())  # type: ignore[arg-type]
    else:
        pending = head
    converter = MonoResampler(rate, channels)
    frame_bytes = width * channels
    block_bytes = max(frame_bytes, int(block_s * rate) * frame_bytes)
    while True:
        raw = stream.read(block_bytes - len(pending)) if len(pending) < block_bytes else b""
        data = pending + raw
        if not raw and len(data) < frame_bytes:
            tail = converter.convert(np.zeros((0, channels), np.float32), last=True)  # resampler's delay line
            if tail.size:
                yield tail
            break
        usable = len(data) // frame_bytes * frame_bytes
        pending = data[usable:]
        samples = pcm_to_float(data[:usable], width, is_float).reshape(-1, channels)
        out = converter.convert(samples, last=not raw)
        if out.size:
            yield out
        if not raw:
            break


# ------------------------------------------------------------------ async sources


@dataclass
class SourceStatus:
    """Live state of a source, for /api/status, metrics and logs."""

    name: str
    url: str
    state: Literal["starting", "running", "degraded", "ended", "stopped"] = "starting"
    error: str | None = None
    overruns: int = 0
    samples: int = 0
    restarts: int = 0
    non_finite_samples: int = 0
    since: float = field(default_factory=time.time)

    def set(self, state: str, error: str | None = None) -> None:
        if state != self.state or error != self.error:
            self.state, self.error, self.since = state, error, time.time()  # type: ignore[assignment]

    @property
    def seconds(self) -> float:
        return self.samples / TARGET_RATE


#: Blocks a reader thread may run ahead of the pipeline.
READ_AHEAD_BLOCKS = 8


async def _iterate_in_thread(
    iterator_factory: Callable[[], Iterator[np.ndarray]], realtime: bool, status: SourceStatus
) -> AsyncIterator[np.ndarray]:
    """Run a blocking block iterator in its own daemon thread; pace at real time when asked.

    A daemon thread rather than the loop's executor: a read that never returns (stdin kept
    open by a writer that went quiet, a stalled stream) must not keep harken from exiting
    after SIGTERM, and the executor's threads are joined at interpreter exit.
    """
    loop = asyncio.get_running_loop()
    handed: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    slots = threading.Semaphore(READ_AHEAD_BLOCKS)
    stop = threading.Event()

    def hand_over(kind: str, value: Any) -> bool:
        while not slots.acquire(timeout=0.5):
            if stop.is_set():
                return False
        try:
            loop.call_soon_threadsafe(handed.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: nobody listens any more
            return False
        return not stop.is_set()

    def produce() -> None:
        iterator = iterator_factory()
        try:
            for block in iterator:
                if not hand_over("block", block):
                    return
            hand_over("end", None)
        except BaseException as exc:  # handed to the pipeline, which decides what it means
            hand_over("error", exc)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()  # e.g. kills an ffmpeg child

    threading.Thread(target=produce, name=f"read-{status.name}", daemon=True).start()
    started = time.monotonic()
    delivered_s = 0.0
    try:
        while True:
            kind, value = await handed.get()
            slots.release()
            if kind == "end":
                return
            if kind == "error":
                raise value
            status.samples += value.shape[0]
            yield value
            if realtime:
                delivered_s += value.shape[0] / TARGET_RATE
                ahead = delivered_s - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
    finally:
        stop.set()
        slots.release()  # a reader waiting for a slot sees the stop at once


class AudioSource:
    """An async producer of 16 kHz mono float32 blocks."""

    def __init__(self, name: str, url: str, realtime: bool = True, loop: bool = False) -> None:
        self.name = name
        self.url = url
        self.spec = parse_source_url(url)
        self.realtime = realtime
        self.loop = loop or self.spec.kind == "demo"
        self.status = SourceStatus(name=name, url=url)

    @property
    def retryable(self) -> bool:
        """Microphones and network streams can come back; files and stdin cannot."""
        return self.spec.kind in ("mic", "url")

    async def blocks(self) -> AsyncIterator[np.ndarray]:
        kind = self.spec.kind
        if kind in ("file", "demo"):
            path = DEMO_PATH if kind == "demo" else Path(self.spec.target or "")
            while True:
                async for block in _iterate_in_thread(lambda: iter_file(path), self.realtime, self.status):
                    yield block
                if not self.loop:
                    return
        elif kind == "stdin":
            # stdin is paced by whoever writes it.
            async for block in _iterate_in_thread(iter_stdin, False, self.status):
                yield block
        elif kind == "url":
            target = self.spec.target or ""
            async for block in _iterate_in_thread(lambda: iter_ffmpeg(target, True), False, self.status):
                yield block
            raise SourceError(f"stream {target} ended", retryable=True)
        else:
            from service.audio.mic import microphone_blocks

            async for block in microphone_blocks(self.spec.target, self.status):
                yield block
