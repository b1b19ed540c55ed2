"""Speed of the whole offline pipeline (decode -> features -> ONNX -> decisions) on one core.

Prints a table of each stage and the whole as multiples of real time, and peak memory.
Usage: python bench/pipeline.py [--minutes 10] [--format wav|flac]
"""

from __future__ import annotations

import os

# One process, one thread: pin the numeric libraries before they load.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models import synth  # noqa: E402
from service.audio.features import LogMel  # noqa: E402
from service.audio.sources import read_audio  # noqa: E402
from service.decision import EventDecider  # noqa: E402
from service.detector import Detector  # noqa: E402
from service.pipeline import analyse_file  # noqa: E402


def make_recording(minutes: float, path: Path) -> None:
    """A long domestic-like recording with an alarm, a cry and a glass break every minute."""
    rng = np.random.default_rng(0)
    parts = []
    for _ in range(int(minutes)):
        bed = synth.background(60.0, rng) * 0.05
        alarm, _ = synth.alarm("t3", 1, rng)
        synth.mix_at_snr(bed, alarm, 5 * 16000, 6.0)
        synth.mix_at_snr(bed, synth.cry(4.0, rng), 25 * 16000, 3.0)
        synth.mix_at_snr(bed, synth.glass(rng), 45 * 16000, 6.0)
        parts.append(bed)
    sf.write(str(path), np.concatenate(parts), 16000, subtype="PCM_16")


def best_of(fn: Callable[[], object], repeats: int = 5) -> tuple[float, float]:
    """Best wall-clock and best CPU time of `repeats` runs. CPU time (one thread) is the
    steadier figure on a shared machine; wall time is what a user waits."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - wall)
    return min(walls), min(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--format", choices=["wav", "flac"], default="wav")
    parser.add_argument("--model", type=Path, help="a .onnx model (default: the bundled one)")
    args = parser.parse_args()
    detector = Detector.load(args.model, threads=1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"bench.{args.format}"
        make_recording(args.minutes, path)
        audio_s = sf.info(str(path)).duration
        audio = read_audio(path)
        frames = LogMel().frames(audio)
        scores = detector.scores(frames)
        c = detector.contract

        def decisions() -> None:
            decider = EventDecider(c.class_names, c.decision, c.features.hop_s)
            decider.update(scores)
            decider.flush()

        stages = [
            ("decode (soundfile, 16 kHz mono)", lambda: read_audio(path)),
            ("log-mel features", lambda: LogMel().frames(audio)),
            ("ONNX detector", lambda: detector.scores(frames)),
            ("event decisions", decisions),
            ("whole pipeline (harken detect)", lambda: analyse_file(path, detector)),
        ]
        print(f"audio: {audio_s / 60:.1f} min {args.format}, model {c.model_name} {c.model_version}, one thread")
        print(f"{'stage':<34} {'wall s':>8} {'x real time':>12} {'cpu s':>8} {'x real time (cpu)':>18}")
        for name, fn in stages:
            wall, cpu = best_of(fn)
            print(f"{name:<34} {wall:>8.3f} {audio_s / wall:>12.0f} {cpu:>8.3f} {audio_s / max(cpu, 1e-9):>18.0f}")
        events = analyse_file(path, detector).events
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"events found: {len(events)} (3 planted per minute); peak memory (max RSS): {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
