"""Build the bundled demo recording (synthetic, so it carries no third-party licence).

A 45 s domestic-like background with a T3 smoke alarm, a cry-like sound and a
glass-break-like sound. Usage: python -m models.demo [--out PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf

from models import synth

DEMO_EVENTS = (("smoke_alarm", 5.0), ("baby_cry", 19.0), ("glass_break", 34.0))
DEMO_SECONDS = 45.0


def build_demo(seed: int = 2026) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    rng = np.random.default_rng(seed)
    sr = synth.SAMPLE_RATE
    bed = synth.background(DEMO_SECONDS, rng) * 0.05
    truth = []
    for name, at_s in DEMO_EVENTS:
        if name == "smoke_alarm":
            sig, _ = synth.alarm("t3", 2, rng)
            sig = sig[: int(np.flatnonzero(np.abs(sig) > 1e-4)[-1]) + 1]
        elif name == "baby_cry":
            sig = synth.cry(5.0, rng)
        else:
            sig = synth.glass(rng)
        synth.mix_at_snr(bed, sig, int(at_s * sr), 10.0)
        truth.append((name, at_s, at_s + len(sig) / sr))
    bed = bed / (np.abs(bed).max() + 1e-9) * 0.7
    return bed.astype(np.float32), truth


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    default_out = Path(__file__).resolve().parent.parent / "service" / "assets" / "demo.flac"
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args(argv)
    audio, truth = build_demo()
    sf.write(str(args.out), audio, synth.SAMPLE_RATE, subtype="PCM_16")
    for name, onset, offset in truth:
        print(f"{name}\t{onset:.2f}\t{offset:.2f}")


if __name__ == "__main__":
    main()
