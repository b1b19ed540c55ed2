"""Soak: hours of audio through a real `harken run` at accelerated pace, watching memory and
counting events. The scene (3 smoke alarms in 39 s of room noise) loops as fast as the CPU
allows; every loop must add exactly 3 events, and the resident memory must stay flat.

Prints a table of audio hours, events expected/stored and RSS over the run. Usage:
    python bench/soak.py [--hours 1] [--samples 10]
"""

from __future__ import annotations

import argparse
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.daemon import start_daemon  # noqa: E402
from tests.harken_process import alarm_segment  # noqa: E402

TOKEN = "soak-token-123"
ALARMS_PER_LOOP = 3


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def smoke_events(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM events WHERE class = 'smoke_alarm'").fetchone()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=1.0, help="audio hours to play")
    parser.add_argument("--samples", type=int, default=10, help="rows of the table")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        scene = root / "scene.wav"
        audio = np.concatenate([alarm_segment(seed) for seed in range(ALARMS_PER_LOOP)])
        sf.write(str(scene), audio, 16000, subtype="PCM_16")
        loop_s = len(audio) / 16000
        db = root / "harken.db"
        process, url = start_daemon(root, {
            "sources": [{"name": "soak", "url": f"file:{scene}", "realtime": False, "loop": True}],
            "store": {"path": str(db), "clip_pre_s": 0.5, "clip_post_s": 0.5},
            "api": {"token": TOKEN},
        })
        headers = {"Authorization": f"Bearer {TOKEN}"}
        target_s = args.hours * 3600
        started = time.monotonic()
        rows = []
        try:
            next_mark = 0.0
            while True:
                try:
                    status = httpx.get(url + "/api/status", headers=headers, timeout=5).json()
                except httpx.TransportError:
                    if process.poll() is not None:
                        raise SystemExit("harken exited") from None
                    time.sleep(0.5)
                    continue
                audio_s = status["sources"][0]["audio_s"]
                if audio_s >= next_mark:
                    loops = int(audio_s // loop_s)
                    rows.append((audio_s / 3600, loops * ALARMS_PER_LOOP, smoke_events(db), rss_mib(process.pid),
                                 time.monotonic() - started))
                    next_mark += target_s / args.samples
                if audio_s >= target_s:
                    break
                time.sleep(0.5)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
        final = smoke_events(db)
        total_loops = rows[-1][0] * 3600 / loop_s
    print(f"\nSoak: {args.hours:g} h of audio (a {loop_s:.0f} s scene with {ALARMS_PER_LOOP} smoke alarms, looped)")
    print(f"{'audio h':>8} {'expected':>9} {'stored':>7} {'RSS MiB':>8} {'wall s':>7}")
    for hours, expected, stored, rss, wall in rows:
        print(f"{hours:>8.2f} {expected:>9} {stored:>7} {rss:>8.1f} {wall:>7.0f}")
    print(f"after shutdown: {final} smoke-alarm events stored for {total_loops:.1f} loops "
          f"(expected {ALARMS_PER_LOOP * int(total_loops)} to {ALARMS_PER_LOOP * (int(total_loops) + 1)}); "
          f"× real time {rows[-1][0] * 3600 / max(rows[-1][4], 1e-9):.0f}")


if __name__ == "__main__":
    main()
