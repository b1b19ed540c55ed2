"""A real PortAudio capture device without sound hardware: PulseAudio in user mode with a
pipe source, reached by PortAudio through ALSA's pulse plugin. A feeder thread writes the
FIFO at real-time pace (silence, with test audio spliced in), because the pipe source
produces nothing while nobody writes and PortAudio then never calls back."""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

RATE = 16000
BLOCK = 1600  # 100 ms


class VirtualMic:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.fifo = workdir / "mic.fifo"
        self.socket = workdir / "native"
        self.env = {**os.environ, "PULSE_SERVER": f"unix:{self.socket}"}
        self._audio: queue.Queue[np.ndarray] = queue.Queue()
        self._stop = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._feeder: threading.Thread | None = None

    def start(self) -> None:
        (self.dir / "run").mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir / "run", 0o700)
        config = self.dir / "default.pa"
        config.write_text(
            f"load-module module-native-protocol-unix auth-anonymous=1 socket={self.socket}\n"
            f"load-module module-pipe-source source_name=vmic file={self.fifo} format=s16le rate={RATE} channels=1\n"
            f"load-module module-null-sink sink_name=vspk rate={RATE} channels=1\n"
            "set-default-source vmic\nset-default-sink vspk\n"
        )
        env = {**self.env, "XDG_RUNTIME_DIR": str(self.dir / "run"), "HOME": str(self.dir)}
        self._proc = subprocess.Popen(
            [shutil.which("pulseaudio") or "pulseaudio", "-n", "-F", str(config), "--daemonize=no",
             "--exit-idle-time=-1", f"--log-target=file:{self.dir / 'pulse.log'}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            ok = subprocess.run(["pactl", "info"], env=self.env, capture_output=True, timeout=5).returncode == 0
            if ok and self.fifo.exists():
                break
            time.sleep(0.1)
        else:
            self.stop()
            log = (self.dir / "pulse.log").read_text()[-2000:]
            raise RuntimeError(f"pulseaudio did not start; log: {log}")
        self._stop.clear()
        self._feeder = threading.Thread(target=self._feed, name="virtual-mic-feeder", daemon=True)
        self._feeder.start()

    def play(self, audio: np.ndarray) -> None:
        """Splice audio (16 kHz mono float) into the stream as soon as possible."""
        for start in range(0, len(audio), BLOCK):
            block = np.zeros(BLOCK, dtype=np.float32)
            chunk = audio[start : start + BLOCK]
            block[: len(chunk)] = chunk
            self._audio.put(block)

    def _feed(self) -> None:
        # O_RDWR: never blocks waiting for a reader and never gets EPIPE.
        fd = os.open(self.fifo, os.O_RDWR | os.O_NONBLOCK)
        silence = np.zeros(BLOCK, dtype=np.float32)
        started = time.monotonic()
        sent = 0
        try:
            while not self._stop.is_set():
                try:
                    block = self._audio.get_nowait()
                except queue.Empty:
                    block = silence
                pcm = (np.clip(block, -1, 1) * 32767).astype("<i2").tobytes()
                # When the reader is behind, drop rather than stall the clock.
                with contextlib.suppress(BlockingIOError):
                    os.write(fd, pcm)
                sent += BLOCK
                ahead = sent / RATE - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        finally:
            os.close(fd)

    def stop(self) -> None:
        self._stop.set()
        if self._feeder is not None:
            self._feeder.join(timeout=5)
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
