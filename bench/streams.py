"""How many real-time streams one harken process sustains on this machine.

Three measurements, each printed as a table:

1. model calls: scoring one 100 ms block of N streams, one call per stream ("sequential")
   against one call for all of them ("concat": windows joined along time; "batch": along
   the batch axis, for a copy of the model with a dynamic batch dimension, needs `onnx`);
2. saturation: N file sources of the bundled 45 s demo through the real daemon
   (`run_daemon`: features, batched inference, decisions, store), as fast as possible;
   aggregate × real time = streams one process could keep up with; CPU seconds per audio
   second gives streams per core. Once with the shared batched inference stage and once
   with the old per-source executor jobs;
3. real time: N demo sources paced at real time for a while; each must keep pace.

    python bench/streams.py                 # default sizes, about two minutes
    python bench/streams.py --streams 1 8 32 --realtime 8 24 --seconds 15
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service import daemon
from service.audio.features import StreamingLogMel
from service.audio.sources import DEMO_PATH, read_audio
from service.config import Settings
from service.detector import Detector, push_many

BLOCK = 1600  # 100 ms, as file, stdin and url sources deliver
WARMUP_S = 3.0  # real-time runs: start-up time left out of the pace measurement


def bench_model_calls(sizes: list[int], repeats: int = 200) -> None:
    detector = Detector.load()
    audio = read_audio(DEMO_PATH)
    features = StreamingLogMel(detector.contract.features).push(audio[: BLOCK * 20])  # (T, n_mels)
    per_block = detector.contract.features.frames_in(BLOCK) or 5
    variants: list[tuple[str, Detector]] = [("sequential", detector), ("concat", detector)]
    try:
        import onnx

        model = onnx.load(str(detector.path))
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
        model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
        path = Path(tempfile.mkdtemp()) / "dynamic-batch.onnx"
        onnx.save(model, str(path))
        dynamic = Detector.load(path)
        if dynamic.batch_mode == "batch":
            variants.append(("batch", dynamic))
    except ImportError:
        print("(onnx not installed: the batch-axis variant is skipped)")
    print("\n1. Model calls: one 100 ms block of each of N streams (ms per round)")
    print(f"{'streams':>8} " + " ".join(f"{name:>11}" for name, _ in variants) + "   best")
    for n in sizes:
        row = []
        for mode, det in variants:
            det.batch_mode = mode  # type: ignore[assignment]
            scorers = [det.stream() for _ in range(n)]
            for s in scorers:  # fill the history so every round scores
                s.push(features[:40])
            for _ in range(20):  # warm-up: ORT allocates its buffers on the first calls
                push_many([(s, features[:per_block]) for s in scorers])
            started = time.perf_counter()
            for r in range(repeats):
                offset = (r * per_block) % (features.shape[0] - per_block)
                push_many([(s, features[offset : offset + per_block]) for s in scorers])
            row.append((time.perf_counter() - started) / repeats * 1e3)
        best = variants[int(np.argmin(row))][0]
        print(f"{n:>8} " + " ".join(f"{ms:>11.3f}" for ms in row) + f"   {best}")


def _settings(n: int, store: Path, realtime: bool) -> Settings:
    return Settings.model_validate(
        {
            "sources": [
                {
                    "name": f"s{i}",
                    "url": "demo" if realtime else f"file:{DEMO_PATH}",
                    "realtime": realtime,
                    "loop": realtime,
                }
                for i in range(n)
            ],
            "store": {"path": str(store)},
            "api": {"enabled": False},
            "mqtt": {"enabled": False},
        }
    )


def _run(n: int, realtime: bool, seconds: float, batched: bool) -> dict[str, float]:
    """One daemon run; returns wall, CPU and audio seconds measured after start-up."""
    captured: dict[str, object] = {}
    real_build = daemon.build_runtime

    def build(settings: Settings) -> daemon.Runtime:
        runtime = real_build(settings)
        if not batched:
            for runner in runtime.runners:
                runner.batcher = None  # every block its own executor job, as before batching
        captured.update(runtime=runtime, wall=time.perf_counter(), cpu=time.process_time())
        return runtime

    paced: dict[str, float] = {}

    async def measure_pace(stop: asyncio.Event) -> None:
        # Steady state only: skip start-up, then compare audio done with wall time passed.
        await asyncio.sleep(WARMUP_S)
        runners = captured["runtime"].runners  # type: ignore[attr-defined]
        wall0, audio0 = time.perf_counter(), [r.audio_s for r in runners]
        await asyncio.sleep(seconds)
        wall = time.perf_counter() - wall0
        paced["slowest"] = min(r.audio_s - a for r, a in zip(runners, audio0, strict=True)) / wall
        stop.set()

    async def main(settings: Settings) -> None:
        stop = asyncio.Event()
        pacer = asyncio.create_task(measure_pace(stop)) if realtime else None
        await daemon.run_daemon(settings, stop)
        if pacer is not None:
            await pacer

    with tempfile.TemporaryDirectory() as tmp:
        daemon.build_runtime = build  # type: ignore[assignment]
        try:
            asyncio.run(main(_settings(n, Path(tmp) / "bench.db", realtime)))
        finally:
            daemon.build_runtime = real_build  # type: ignore[assignment]
        wall = time.perf_counter() - float(captured["wall"])  # type: ignore[arg-type]
        cpu = time.process_time() - float(captured["cpu"])  # type: ignore[arg-type]
    runtime: daemon.Runtime = captured["runtime"]  # type: ignore[assignment]
    audio = [r.audio_s for r in runtime.runners]
    stats = runtime.batcher.stats if runtime.batcher is not None and batched else None
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "audio_s": float(sum(audio)),
        "pace": paced.get("slowest", 0.0),
        "mean_batch": stats.mean_batch if stats else 1.0,
    }


def bench_saturation(sizes: list[int]) -> None:
    cores = os.cpu_count() or 1
    print(
        f"\n2. Saturation: N × {DEMO_PATH.name} (45 s) through run_daemon as fast as possible "
        f"({cores} cores)"
    )
    print(
        f"{'streams':>8} {'inference':>10} {'wall_s':>7} {'× real time':>12} {'cpu_s/audio_s':>14} "
        f"{'streams/core':>13} {'mean batch':>11}"
    )
    for n in sizes:
        for batched in (True, False):
            r = _run(n, realtime=False, seconds=0, batched=batched)
            xrt = r["audio_s"] / r["wall_s"]
            cost = r["cpu_s"] / r["audio_s"]
            print(
                f"{n:>8} {'batched' if batched else 'per-source':>10} {r['wall_s']:>7.1f} "
                f"{xrt:>12.0f} {cost:>14.4f} {1 / cost:>13.0f} {r['mean_batch']:>11.1f}"
            )


def bench_realtime(sizes: list[int], seconds: float) -> None:
    print(f"\n3. Real time: N demo sources paced at real time for {seconds:.0f} s")
    print(
        f"{'streams':>8} {'slowest stream':>15} {'keeps up':>9} {'cpu of one core':>16} "
        f"{'mean batch':>11}"
    )
    for n in sizes:
        r = _run(n, realtime=True, seconds=seconds, batched=True)
        # Audio the slowest stream processed per wall second in steady state (1.0 = real time).
        pace = r["pace"]
        print(
            f"{n:>8} {pace:>14.2f}x {'yes' if pace >= 0.99 else 'NO':>9} "
            f"{100 * r['cpu_s'] / r['wall_s']:>15.0f}% {r['mean_batch']:>11.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--realtime", type=int, nargs="+", default=[4, 16])
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="duration of each real-time run"
    )
    parser.add_argument(
        "--skip", choices=["calls", "saturation", "realtime"], nargs="*", default=[]
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"{os.cpu_count()} cores, load average {load} (other processes share these cores: "
        "the figures are what this process got)"
    )
    if "calls" not in args.skip:
        bench_model_calls(args.streams)
    if "saturation" not in args.skip:
        bench_saturation(args.streams)
    if "realtime" not in args.skip:
        bench_realtime(args.realtime, args.seconds)


if __name__ == "__main__":
    main()
