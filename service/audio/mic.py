"""Microphone capture through sounddevice/PortAudio.

The PortAudio callback runs on PortAudio's thread: it only copies the block and hands it
to the event loop with `call_soon_threadsafe`; it never blocks, allocates queues or logs.
A full queue drops the block and counts an overrun, so a stalled pipeline cannot stall
the audio driver.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from service.audio.sources import TARGET_RATE, MonoResampler, SourceError, SourceStatus

log = logging.getLogger(__name__)

QUEUE_BLOCKS = 64  # 6.4 s of 100 ms blocks
#: No audio for this long means the device is gone (PortAudio often just stops calling).
STALL_TIMEOUT_S = 3.0


def _sounddevice() -> Any:
    try:
        import sounddevice
    except OSError as exc:  # libportaudio missing
        raise SourceError(f"PortAudio is not available ({exc}); install libportaudio2", retryable=True) from None
    return sounddevice


def list_input_devices() -> list[dict[str, Any]]:
    """Input-capable devices as sounddevice reports them, with their index."""
    sd = _sounddevice()
    devices = []
    default_in = sd.default.device[0] if sd.default.device else None
    for index, dev in enumerate(sd.query_devices()):
        if dev["max_input_channels"] > 0:
            devices.append({
                "index": index,
                "name": dev["name"],
                "channels": dev["max_input_channels"],
                "default_samplerate": dev["default_samplerate"],
                "hostapi": sd.query_hostapis(dev["hostapi"])["name"],
                "default": index == default_in,
            })
    return devices


def resolve_device(target: str | None) -> int | None:
    """None = default device; an index; or the first device whose name contains the text."""
    if target is None:
        return None
    devices = list_input_devices()
    if target.isdigit():
        index = int(target)
        if not any(d["index"] == index for d in devices):
            raise SourceError(f"no input device with index {index} (see `harken devices`)", retryable=True)
        return index
    for dev in devices:
        if target.lower() in dev["name"].lower():
            return int(dev["index"])
    raise SourceError(f"no input device named like {target!r} (see `harken devices`)", retryable=True)


async def microphone_blocks(target: str | None, status: SourceStatus) -> AsyncIterator[np.ndarray]:
    sd = _sounddevice()
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[np.ndarray] = asyncio.Queue(maxsize=QUEUE_BLOCKS)
    device = resolve_device(target)
    try:
        info = sd.query_devices(device, "input")
    except (ValueError, sd.PortAudioError) as exc:
        raise SourceError(f"microphone {target or 'default'}: {exc}", retryable=True) from None
    channels = 1
    rate = TARGET_RATE
    try:
        sd.check_input_settings(device=device, channels=1, samplerate=TARGET_RATE, dtype="float32")
    except Exception:
        # Many devices only do 44.1/48 kHz or stereo: capture natively, convert here.
        rate = int(info["default_samplerate"])
        channels = min(2, int(info["max_input_channels"])) or 1
    converter = MonoResampler(rate, channels)

    def enqueue(block: np.ndarray) -> None:
        if queue.full():
            status.overruns += 1
            return
        queue.put_nowait(block)

    def callback(indata: np.ndarray, frames: int, time_info: Any, flags: Any) -> None:
        if flags.input_overflow:
            status.overruns += 1
        loop.call_soon_threadsafe(enqueue, indata.copy())

    try:
        stream = sd.InputStream(
            device=device, channels=channels, samplerate=rate, dtype="float32",
            blocksize=int(rate * 0.1), callback=callback,
        )
        stream.start()
    except Exception as exc:
        raise SourceError(f"cannot open microphone {target or 'default'}: {exc}", retryable=True) from None
    log.info("microphone %r open: %s at %d Hz, %d channel(s)", target or "default", info["name"], rate, channels)
    try:
        while True:
            try:
                block = await asyncio.wait_for(queue.get(), timeout=STALL_TIMEOUT_S)
            except TimeoutError:
                raise SourceError(
                    f"microphone {info['name']!r} delivered no audio for {STALL_TIMEOUT_S:.0f} s "
                    "(unplugged or stopped?)", retryable=True,
                ) from None
            out = converter.convert(block)
            status.samples += out.shape[0]
            status.non_finite_samples = converter.non_finite_samples
            if out.size:
                yield out
    finally:
        # stop()/close() can hang when the device vanished; never let that block the loop.
        await asyncio.get_running_loop().run_in_executor(None, _close_quietly, stream)


def _close_quietly(stream: Any) -> None:
    try:
        stream.abort()
        stream.close()
    except Exception:  # the device may already be gone
        log.debug("closing microphone stream failed", exc_info=True)
