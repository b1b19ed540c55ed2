"""Load on the API of a real, detecting harken: REST throughput and latency under concurrent
clients, and WebSocket fan-out to many dashboards at once.

Starts `harken run` on a looping smoke-alarm scene played at real time (so it detects while
it serves), with the request rate limit off (it would otherwise be what is measured).
Prints two tables. Usage:
    python bench/api_load.py [--clients 16] [--seconds 10] [--ws-clients 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import soundfile as sf
import websockets

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.daemon import start_daemon  # noqa: E402
from tests.conftest import t3_scene  # noqa: E402

TOKEN = "bench-token-123"


def start_harken(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    scene = root / "scene.wav"
    sf.write(str(scene), t3_scene(12.0, alarm_at_s=1.5), 16000, subtype="PCM_16")
    return start_daemon(root, {
        "sources": [{"name": "nursery", "url": f"file:{scene}", "realtime": True, "loop": True}],
        "classes": {"smoke_alarm": {"decision": {"merge_gap_s": 2.0}}},
        "store": {"path": str(root / "harken.db")},
        "api": {"token": TOKEN, "rate_limit_per_s": None},
    })


async def rest_load(url: str, clients: int, seconds: float) -> None:
    paths = ["/api/status", "/api/events?limit=50", "/api/classes", "/api/health"]
    latencies: dict[str, list[float]] = {p: [] for p in paths}
    errors = 0
    headers = {"Authorization": f"Bearer {TOKEN}"}
    deadline = time.monotonic() + seconds

    async def client(index: int) -> None:
        nonlocal errors
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=10) as http:
            i = index
            while time.monotonic() < deadline:
                path = paths[i % len(paths)]
                i += 1
                started = time.perf_counter()
                response = await http.get(path)
                latencies[path].append(time.perf_counter() - started)
                if response.status_code != 200:
                    errors += 1

    started = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.monotonic() - started
    total = sum(len(v) for v in latencies.values())
    print(f"\nREST, {clients} concurrent clients, {elapsed:.0f} s, while detecting")
    print(f"{'endpoint':<24} {'requests':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for path, values in latencies.items():
        values.sort()
        p50 = values[len(values) // 2] * 1000
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))] * 1000
        print(f"{path:<24} {len(values):>9} {p50:>8.1f} {p99:>8.1f}")
    every = sorted(v for values in latencies.values() for v in values)
    print(f"{'all':<24} {total:>9} {every[len(every) // 2] * 1000:>8.1f} "
          f"{every[min(len(every) - 1, int(len(every) * 0.99))] * 1000:>8.1f}")
    print(f"throughput {total / elapsed:.0f} requests/s, non-200 answers: {errors}")


async def ws_fanout(url: str, clients: int, seconds: float) -> None:
    ws_url = url.replace("http://", "ws://") + "/api/live"
    counts: list[dict[str, int]] = [{} for _ in range(clients)]
    connected = 0

    async def client(index: int) -> None:
        nonlocal connected
        async with websockets.connect(ws_url, subprotocols=["harken", f"bearer.{TOKEN}"],
                                      open_timeout=20) as ws:
            connected += 1
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                try:
                    raw = await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic()))
                except TimeoutError:
                    break
                kind = json.loads(raw).get("type", "?")
                counts[index][kind] = counts[index].get(kind, 0) + 1

    await asyncio.gather(*(client(i) for i in range(clients)))
    kinds = sorted({k for c in counts for k in c})
    print(f"\nWebSocket fan-out, {clients} clients connected ({connected} ok), {seconds:.0f} s, while detecting")
    print(f"{'message type':<14} {'min/client':>10} {'mean':>8} {'max':>6}")
    for kind in kinds:
        values = [c.get(kind, 0) for c in counts]
        print(f"{kind:<14} {min(values):>10} {statistics.mean(values):>8.1f} {max(values):>6}")
    events = [c.get("event", 0) for c in counts]
    print(f"clients that received every event message: {sum(1 for e in events if e == max(events))}/{clients}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--ws-clients", type=int, default=50)
    parser.add_argument("--ws-seconds", type=float, default=15.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        process, url = start_harken(Path(tmp))
        try:
            asyncio.run(rest_load(url, args.clients, args.seconds))
            asyncio.run(ws_fanout(url, args.ws_clients, args.ws_seconds))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)


if __name__ == "__main__":
    main()
