"""Speed of the whole offline pipeline (decode -> features -> ONNX -> decisions) on one core.

Prints a table of each stage and the whole as multiples of real time, and peak memory.
Usage: python bench/pipeline.py [--minutes 10] [--format wav|flac] [--model A.onnx --model B.onnx --rounds 5]

On a shared machine a single measurement can be off by a third; several models measured
in interleaved rounds (`--rounds`) are compared by their median and by their ratio
within each round.
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


def measure(
    path: Path, audio: np.ndarray, frames: np.ndarray, detector: Detector, repeats: int
) -> dict[str, tuple[float, float]]:
    """Best wall and CPU seconds of each stage and of the whole pipeline, for one model
    (`audio` and `frames`: the file decoded and its features, the input of the later stages)."""
    scores = detector.scores(frames)
    c = detector.contract

    def decisions() -> None:
        decider = EventDecider(c.class_names, c.decision, c.features.hop_s)
        decider.update(scores)
        decider.flush()

    stages: list[tuple[str, Callable[[], object]]] = [
        ("decode (soundfile, 16 kHz mono)", lambda: read_audio(path)),
        ("log-mel features", lambda: LogMel().frames(audio)),
        ("ONNX detector", lambda: detector.scores(frames)),
        ("event decisions", decisions),
        (WHOLE, lambda: analyse_file(path, detector)),
    ]
    return {name: best_of(fn, repeats) for name, fn in stages}


WHOLE = "whole pipeline (harken detect)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--format", choices=["wav", "flac"], default="wav")
    parser.add_argument(
        "--model", type=Path, action="append",
        help="a .onnx model (default: the bundled one); give it several times to compare models",
    )
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="measure every model this many times, interleaved; tables show the median (and the range)",
    )
    args = parser.parse_args()
    detectors = [Detector.load(m, threads=1) for m in (args.model or [None])]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"bench.{args.format}"
        make_recording(args.minutes, path)
        audio_s = sf.info(str(path)).duration
        # Rounds interleave the models, so a busy moment of a shared machine falls on all of
        # them alike; the ratio to the first model is taken within each round.
        audio = read_audio(path)
        frames = LogMel().frames(audio)
        rounds = [[measure(path, audio, frames, d, repeats=5) for d in detectors] for _ in range(args.rounds)]
        for i, detector in enumerate(detectors):
            c = detector.contract
            print(f"audio: {audio_s / 60:.1f} min {args.format}, model {c.model_name} {c.model_version} "
                  f"({detector.path.name}), one thread, median of {args.rounds} round(s)")
            print(f"{'stage':<34} {'wall s':>8} {'x real time':>12} {'cpu s':>8} {'x real time (cpu)':>18}")
            for name in rounds[0][i]:
                wall = float(np.median([r[i][name][0] for r in rounds]))
                cpu = float(np.median([r[i][name][1] for r in rounds]))
                print(f"{name:<34} {wall:>8.3f} {audio_s / wall:>12.0f} {cpu:>8.3f} {audio_s / max(cpu, 1e-9):>18.0f}")
            events = analyse_file(path, detector).events
            print(f"events found: {len(events)} (3 planted per minute)\n")
        if len(detectors) > 1 or args.rounds > 1:
            first = detectors[0].contract
            print(f"whole pipeline, x real time (wall) over {args.rounds} round(s); ratio to "
                  f"{first.model_name} {first.model_version} within each round")
            print(f"{'model':<46} {'median':>8} {'lowest':>8} {'highest':>8} {'ratio':>7}")
            for i, detector in enumerate(detectors):
                speeds = [audio_s / r[i][WHOLE][0] for r in rounds]
                ratio = float(np.median([r[0][WHOLE][0] / r[i][WHOLE][0] for r in rounds]))
                name = f"{detector.contract.model_name} {detector.contract.model_version} ({detector.path.name})"
                print(f"{name:<46} {np.median(speeds):>8.0f} {min(speeds):>8.0f} {max(speeds):>8.0f} {ratio:>7.2f}")
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak memory (max RSS): {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
