"""A tiny built-negatives folder (the layout of shared/data/negatives/build.py's output)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

from models import synth


def make_negatives(root: Path) -> Path:
    """A built-negatives folder (NEGATIVES.csv + FLAC chunks) of music-like and speech-like noise."""
    rng = np.random.default_rng(1)
    rows = []
    for split, n in (("train", 3), ("dev", 2)):
        for i in range(n):
            kind = ("confuser_music", "confuser_speech")[i % 2]
            rel = f"{split}/pkg{i}/{i:04d}.flac"
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            audio = 0.05 * synth.background(20.0, rng) + 0.05 * np.sin(
                2 * np.pi * (220 + 40 * i) * np.arange(320000) / 16000
            )
            sf.write(str(path), audio.astype(np.float32), 16000, subtype="PCM_16")
            rows.append(
                {
                    "path": rel, "class": kind, "split": split, "source": f"debian:pkg{i}=1",
                    "license": "GPL-2+", "group": f"pkg{i}:x", "duration_s": "20.0", "notes": "",
                }
            )
    with (root / "NEGATIVES.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root
