"""The training loop on scenes made on the fly: resumable, seeded, time-boxed.

One worker process builds batches of new scenes (`models.live_scenes`) while the main
process trains; batch i is built from a generator seeded by (seed, i), so a run resumed
from its `last.pt` sees the very batches an uninterrupted run would have seen. Every
`eval.every_steps` steps the network scores the dev set (dev scenes + hours of dev
negatives), the daemon's own decisions turn scores into events, and the selection
metric keeps the best checkpoint (`best.pt`).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from models import data as D
from models.live_scenes import LiveScene, LiveSceneMaker
from models.losses import EventAwareLoss, EventSpan

log = logging.getLogger(__name__)


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[EventSpan], list[EventSpan]]


def collate(scenes: Sequence[LiveScene]) -> Batch:
    """Scenes -> (features, targets, weights, event spans, onset spans) of one batch."""
    x = torch.from_numpy(np.stack([s.features for s in scenes]).astype(np.float32))
    y = torch.from_numpy(np.stack([s.target for s in scenes]).astype(np.float32))
    w = torch.from_numpy(np.stack([s.weight for s in scenes]).astype(np.float32))
    events = [(b, c, f, e, wt) for b, s in enumerate(scenes) for c, f, e, wt in s.events]
    onsets = [(b, c, f, e, wt) for b, s in enumerate(scenes) for c, f, e, wt in s.onsets]
    return x, y, w, events, onsets


class SceneBatches(torch.utils.data.IterableDataset):
    """Batch i = `batch` scenes from a generator seeded by (seed, i), for i = first, first+1, ..."""

    def __init__(self, maker: LiveSceneMaker, batch: int, seed: int, first: int) -> None:
        super().__init__()
        self.maker, self.batch, self.seed, self.first = maker, batch, seed, first

    def __iter__(self) -> Iterator[Any]:
        i = self.first
        while True:
            rng = np.random.default_rng([self.seed, i])
            yield collate([self.maker.make(rng) for _ in range(self.batch)])
            i += 1


def batches(maker: LiveSceneMaker, batch: int, seed: int, first: int, workers: int) -> Iterator[Any]:
    dataset = SceneBatches(maker, batch, seed, first)
    if workers <= 0:
        return iter(dataset)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=1, prefetch_factor=4, persistent_workers=False
    )
    return iter(loader)


def train_live(
    net: torch.nn.Module,
    loss_fn: EventAwareLoss,
    maker: LiveSceneMaker,
    *,
    steps: int,
    batch: int,
    lr: float,
    weight_decay: float,
    seed: int,
    out_dir: Path,
    evaluate: Callable[[torch.nn.Module], tuple[float, dict[str, Any]]],
    every_steps: int,
    patience: int,
    max_minutes: float | None = None,
    workers: int = 1,
    label: str = "train",
    init_state: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Train (or resume from OUT_DIR/last.pt); returns the run's summary. OUT_DIR/best.pt holds
    the best network state by the `evaluate` selection metric."""
    out_dir.mkdir(parents=True, exist_ok=True)
    last_file, best_file = out_dir / "last.pt", out_dir / "best-state.pt"
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 2), pct_start=0.05)
    state: dict[str, Any] = {"step": 0, "best": -1.0, "best_step": 0, "bad": 0, "history": [], "seconds": 0.0}
    if last_file.is_file():
        saved = torch.load(last_file, map_location="cpu", weights_only=False)
        net.load_state_dict(saved["net"])
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        state = saved["state"]
        torch.set_rng_state(saved["torch_rng"])
        tqdm.write(f"{label}: resumed at step {state['step']} (best {state['best']:.3f} at {state['best_step']})")
    elif init_state is not None:
        net.load_state_dict(init_state)
    else:
        torch.manual_seed(seed)
    started = time.monotonic()
    seconds_before = float(state["seconds"])
    deadline = None if max_minutes is None else started + 60 * max_minutes
    stream = batches(maker, batch, seed, int(state["step"]), workers)
    bar = tqdm(total=steps, initial=int(state["step"]), desc=label, unit="step", disable=None, dynamic_ncols=True)
    stopped = "steps"

    def save_last() -> None:
        state["seconds"] = round(seconds_before + time.monotonic() - started, 1)
        tmp = last_file.with_suffix(".tmp")
        torch.save(
            {
                "net": net.state_dict(),
                "opt": opt.state_dict(),
                "sched": sched.state_dict(),
                "state": state,
                "torch_rng": torch.get_rng_state(),
            },
            tmp,
        )
        tmp.replace(last_file)

    while state["step"] < steps:
        net.train()
        x, y, w, events, onsets = next(stream)
        loss, parts = loss_fn(net(x), y, w, events, onsets)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        sched.step()
        state["step"] += 1
        step = state["step"]
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", best=f"{state['best']:.3f}")
        if step % every_steps == 0 or step == steps:
            selection, metrics = evaluate(net)
            entry = {
                "step": step,
                "loss": round(loss.item(), 4),
                **{k: round(v, 4) for k, v in parts.items()},
                "selection": round(selection, 4),
                "seconds": round(seconds_before + time.monotonic() - started, 1),
                **metrics,
            }
            state["history"].append(entry)
            tqdm.write(f"{label} {json.dumps(entry)}")
            if selection > state["best"]:
                state.update(best=selection, best_step=step, bad=0)
                torch.save(copy.deepcopy(net.state_dict()), best_file)
            else:
                state["bad"] += 1
            save_last()
            if state["bad"] >= patience:
                stopped = "patience"
                break
            if deadline is not None and time.monotonic() > deadline:
                stopped = "time"
                break
    bar.close()
    save_last()
    summary = {
        "steps": state["step"],
        "best_step": state["best_step"],
        "best_selection": state["best"],
        "seconds": state["seconds"],
        "stopped": stopped,
        "history": state["history"],
    }
    (out_dir / "history.json").write_text(json.dumps(summary, indent=1))
    if best_file.is_file():
        net.load_state_dict(torch.load(best_file, map_location="cpu", weights_only=True))
    return summary


def dev_negative_items(
    pool: Any, params: Any, stream_s: float = 600.0, max_hours: float | None = None
) -> list[D.DevItem]:
    """The dev negatives as 10-minute streams (negative-only dev items, for false alarms per hour)."""
    from service.audio.features import LogMel

    logmel = LogMel(params)
    n = int(stream_s * D.SAMPLE_RATE)
    total = pool.audio.shape[0]
    if max_hours is not None:
        total = min(total, int(max_hours * 3600 * D.SAMPLE_RATE))
    items = []
    for i, start in enumerate(range(0, total, n)):
        audio = np.asarray(pool.audio[start : min(start + n, total)], dtype=np.float32) / 32768.0
        if audio.shape[0] < D.SAMPLE_RATE:
            continue
        feats = logmel.frames(audio).astype(np.float16)  # half the memory of 4 h of frames
        items.append(D.DevItem(f"debian-negatives:{i}", feats, [], audio.shape[0] / D.SAMPLE_RATE, True))
    return items
