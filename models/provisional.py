"""Train the provisional model on procedural signals only (a few minutes on a CPU).

It exists so that the daemon has something to run before a model trained on real data
ships; `harken train` replaces it. Usage: python -m models.provisional [--out PATH]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from models import synth
from models.export import export_onnx
from models.net import CompactTCN
from service.audio.features import FeatureParams, LogMel
from service.decision import DecisionParams

CLASSES = ("baby_cry", "smoke_alarm", "glass_break")
LOOKAHEAD_FRAMES = 5  # 100 ms

DEFAULT_DECISIONS = {
    # Alarms pause up to 5 s between T4 groups: one alarm, one event.
    "smoke_alarm": DecisionParams(0.5, 0.3, 3, 3, 5, 0.2, 6.0, 0.0),
    # Babies breathe; pauses under 3 s belong to the same crying.
    "baby_cry": DecisionParams(0.5, 0.3, 5, 5, 8, 0.5, 3.0, 0.0),
    # Breaking glass is short: a few confident frames suffice.
    "glass_break": DecisionParams(0.5, 0.3, 2, 2, 4, 0.04, 1.0, 0.0),
}


def make_scene(rng: np.random.Generator, duration_s: float = 12.0) -> tuple[np.ndarray, list[tuple[int, float, float]]]:
    """A background with 0-2 procedural events; returns audio and (class index, onset, offset)."""
    sr = synth.SAMPLE_RATE
    bed = synth.background(duration_s, rng) * rng.uniform(0.05, 0.3)
    events: list[tuple[int, float, float]] = []
    for _ in range(int(rng.integers(0, 3))):
        kind = int(rng.integers(0, 3))
        if kind == 0:
            sig = synth.cry(rng.uniform(1.5, 4.0), rng)
        elif kind == 1:
            sig, _ = synth.alarm(str(rng.choice(["t3", "t3", "t4", "low"])), 1, rng)
            sig = sig[: int(np.flatnonzero(np.abs(sig) > 1e-4)[-1]) + 1]
        else:
            sig = synth.glass(rng)
        at = int(rng.uniform(0, max(duration_s - len(sig) / sr, 0.1)) * sr)
        synth.mix_at_snr(bed, sig, at, rng.uniform(-3, 15))
        events.append((kind, at / sr, min(duration_s, (at + len(sig)) / sr)))
    return bed.astype(np.float32), events


def frame_targets(events: list[tuple[int, float, float]], n_frames: int, params: FeatureParams) -> np.ndarray:
    centres = params.frame_center_s(np.arange(n_frames))
    target = np.zeros((n_frames, len(CLASSES)), dtype=np.float32)
    for kind, onset, offset in events:
        target[(centres >= onset) & (centres < offset), kind] = 1.0
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "harken.onnx")
    parser.add_argument("--seconds", type=float, default=150.0, help="training time budget")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    torch.set_num_threads(2)
    params = FeatureParams()
    logmel = LogMel(params)
    net = CompactTCN(n_mels=params.n_mels, n_classes=len(CLASSES))
    context = net.receptive_field - LOOKAHEAD_FRAMES
    silence = logmel.silence_frame

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for _ in range(n):
            audio, events = make_scene(rng)
            feats = logmel.frames(audio)
            ys.append(frame_targets(events, feats.shape[0], params))
            xs.append(np.concatenate([np.tile(silence, (context, 1)), feats, np.tile(silence, (LOOKAHEAD_FRAMES, 1))]))
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))

    probe_x, _ = batch(64)
    net.feature_mean.copy_(probe_x.mean(dim=(0, 1)))
    net.feature_std.copy_(probe_x.std(dim=(0, 1)).clamp_min(1e-3))
    optimiser = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    started = time.monotonic()
    step = 0
    while time.monotonic() - started < args.seconds:
        x, y = batch(16)
        net.train()
        loss = loss_fn(net(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        step += 1
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.4f} ({time.monotonic() - started:.0f}s)", flush=True)
    net.eval()
    contract = export_onnx(
        net,
        args.out,
        CLASSES,
        LOOKAHEAD_FRAMES,
        DEFAULT_DECISIONS,
        model_name="harken-provisional",
        model_version="0.1.0-provisional",
        training={
            "data": "procedural signals only (models/synth.py); no recordings",
            "steps": step,
            "seed": args.seed,
            "command": "python -m models.provisional",
        },
    )
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes), receptive field "
          f"{contract.receptive_field_frames} frames, {net.macs_per_frame()} MAC/frame")


if __name__ == "__main__":
    main()
