"""Training on a fixed cache of generated scenes (the 1.x recipe and the loss ablation)."""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from models import data as D
from models.config import CLASSES, TrainConfig, build_net
from models.losses import EventAwareLoss, EventSpan
from models.tuning import dev_scores, evaluate, recipe_selection, tune_for_recipe
from service.audio.features import FeatureParams
from service.decision import DecisionParams

log = logging.getLogger(__name__)


@dataclass
class TrainArrays:
    """Cached training scenes, pre-padded for the network's context and look-ahead."""

    features: np.ndarray  # (N, T + receptive_field, n_mels) float16
    target: np.ndarray  # (N, T, C) uint8
    weight: np.ndarray  # (N, T, C) float16
    events: np.ndarray  # (N, E, 4) float32: class, first, end, weight; class -1 = none


def prepare_data(
    cfg: TrainConfig, data_dir: Path, cache_dir: Path, receptive_field: int, lookahead: int
) -> tuple[TrainArrays, list[D.DevItem], dict[str, Any]]:
    """Generate (or load from cache) the training scenes and dev items."""
    params = FeatureParams()
    manifest = data_dir / "MANIFEST.csv"
    stat = manifest.stat() if manifest.is_file() else None
    key = D.cache_key(
        D.DATA_VERSION,
        cfg.data,
        asdict(cfg.eval)["dev_reps"],
        str(data_dir.resolve()),
        stat.st_size if stat else 0,
        stat.st_mtime if stat else 0,
        params.to_dict(),
    )
    folder = cache_dir / key
    train_file, dev_file, info_file = folder / "train.npz", folder / "dev.npz", folder / "info.json"
    if train_file.is_file() and dev_file.is_file() and info_file.is_file():
        log.info("using cached scenes in %s", folder)
        z = np.load(train_file)
        feats, target, weight, events = z["features"], z["target"], z["weight"], z["events"]
        dz = np.load(dev_file, allow_pickle=False)
        meta = json.loads(info_file.read_text())
        dev = [
            D.DevItem(
                m["name"],
                dz[f"f{i}"],
                [tuple(t) for t in m["truth"]],
                m["duration_s"],
                m["negative_only"],
                m["source_clip"],
            )
            for i, m in enumerate(meta["dev"])
        ]
        info = meta["info"]
    else:
        clips = D.read_clips(data_dir)
        train_clips = D.select(clips, "train", cfg.data.licences)
        dev_clips = D.select(clips, "dev", cfg.data.licences)
        if not train_clips:
            raise ValueError(f"{manifest}: no train clips (licences={cfg.data.licences})")
        t0 = time.monotonic()
        bank = D.ClipBank(train_clips)
        maker = D.SceneMaker(bank, cfg.data, params)
        rng = np.random.default_rng(cfg.data.seed)
        scenes = [
            maker.labelled(rng)
            for _ in tqdm(range(cfg.data.n_scenes), desc="scenes", unit="scene", disable=None)
        ]
        n_frames = min(s.features.shape[0] for s in scenes)
        max_events = max(1, max(len(s.events) for s in scenes))
        feats = np.stack([s.features[:n_frames] for s in scenes])
        target = np.stack([s.target[:n_frames] for s in scenes])
        weight = np.stack([s.weight[:n_frames] for s in scenes])
        events = np.full((len(scenes), max_events, 4), -1.0, dtype=np.float32)
        for i, s in enumerate(scenes):
            for j, (c, a, b, w) in enumerate(s.events):
                events[i, j] = (c, a, min(b, n_frames), w)
        dev_bank = D.ClipBank(dev_clips)
        dev = D.build_dev(dev_bank, seed=cfg.data.seed + 1, params=params, reps=cfg.eval.dev_reps)
        info = {
            "train": bank.summary(),
            "dev": D.dev_summary(dev),
            "dev_bank": dev_bank.summary(),
            "licences": cfg.data.licences,
            "sources": sorted({f"{c.source} | {c.licence}" for c in train_clips + dev_clips}),
            "scene_seconds": cfg.data.n_scenes * cfg.data.scene_s,
            "generation_s": round(time.monotonic() - t0, 1),
        }
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(train_file, features=feats, target=target, weight=weight, events=events)
        np.savez(dev_file, **{f"f{i}": it.features for i, it in enumerate(dev)})
        info_file.write_text(
            json.dumps(
                {
                    "info": info,
                    "dev": [
                        {
                            "name": it.name,
                            "truth": it.truth,
                            "duration_s": it.duration_s,
                            "negative_only": it.negative_only,
                            "source_clip": it.source_clip,
                        }
                        for it in dev
                    ],
                }
            )
        )
    context = receptive_field - lookahead
    # A stream starts with its first frame repeated (service.detector pads the same way).
    pad_before = np.repeat(feats[:, :1], context, axis=1)
    pad_after = np.repeat(feats[:, -1:], lookahead, axis=1)  # ... and ends with its last
    padded = np.concatenate([pad_before, feats, pad_after], axis=1)
    return TrainArrays(padded, target, weight, events), dev, info


class Batcher:
    """Seeded random crops of the cached scenes."""

    def __init__(
        self, arrays: TrainArrays, receptive_field: int, crop_frames: int, seed: int
    ) -> None:
        self.a = arrays
        self.rf = receptive_field
        self.n_frames = arrays.target.shape[1]
        self.crop = min(crop_frames, self.n_frames)
        self.rng = np.random.default_rng(seed)

    def __call__(
        self, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[EventSpan]]:
        idx = self.rng.integers(0, self.a.features.shape[0], batch)
        starts = self.rng.integers(0, self.n_frames - self.crop + 1, batch)
        win = np.arange(self.crop + self.rf)
        x = self.a.features[idx[:, None], starts[:, None] + win[None, :]].astype(np.float32)
        out = np.arange(self.crop)
        y = self.a.target[idx[:, None], starts[:, None] + out[None, :]].astype(np.float32)
        w = self.a.weight[idx[:, None], starts[:, None] + out[None, :]].astype(np.float32)
        spans: list[EventSpan] = []
        for b, (i, o) in enumerate(zip(idx, starts, strict=True)):
            for c, first, end, weight in self.a.events[i]:
                if c < 0:
                    continue
                a, e = max(int(first), o), min(int(end), o + self.crop)
                length = int(end) - int(first)
                # A cut event still counts if enough of it is inside the crop.
                if e - a >= max(5, min(25, int(0.4 * length))):
                    spans.append((b, int(c), a - int(o), e - int(o), float(weight)))
        return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(w), spans


# --------------------------------------------------------------------------- evaluation
@dataclass
class RunResult:
    name: str
    steps: int
    best_step: int
    seconds: float
    metrics_default: dict[str, Any]
    metrics_tuned: dict[str, Any]
    tuned: dict[str, DecisionParams]
    state: dict[str, torch.Tensor]


def train_run(
    cfg: TrainConfig,
    arrays: TrainArrays,
    dev: Sequence[D.DevItem],
    steps: int,
    label: str = "train",
    out_dir: Path | None = None,
) -> RunResult:
    """Train one network on cached scenes; early-stop on the dev event F1."""
    torch.manual_seed(cfg.seed)
    params = FeatureParams()
    net = build_net(cfg, params)
    lookahead = cfg.net.lookahead_frames
    # Normalisation statistics from the training scenes (they live inside the graph).
    sample = (
        arrays.features[:: max(1, arrays.features.shape[0] // 200)]
        .astype(np.float32)
        .reshape(-1, params.n_mels)
    )
    net.feature_mean.copy_(torch.from_numpy(sample.mean(axis=0)))
    net.feature_std.copy_(torch.from_numpy(sample.std(axis=0)).clamp_min(1e-3))
    loss_fn = EventAwareLoss(cfg.loss, CLASSES)
    batcher = Batcher(arrays, net.receptive_field, cfg.opt.crop_frames, cfg.seed)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.opt.lr, weight_decay=cfg.opt.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.opt.lr, total_steps=max(steps, 2), pct_start=0.1
    )
    best_f1, best_step, best_state, bad = -1.0, 0, copy.deepcopy(net.state_dict()), 0
    started = time.monotonic()
    bar = tqdm(range(1, steps + 1), desc=label, unit="step", disable=None, dynamic_ncols=True)
    history = []
    step = 0
    for step in bar:
        net.train()
        x, y, w, spans = batcher(cfg.opt.batch)
        loss, parts = loss_fn(net(x), y, w, spans)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", best_f1=f"{best_f1:.3f}")
        if step % cfg.eval.every_steps == 0 or step == steps:
            scores = dev_scores(net, dev, lookahead)
            m = evaluate(scores, dev, cfg.decision)
            sel, _ = recipe_selection(scores, dev, cfg)
            history.append(
                {
                    "step": step,
                    "loss": round(loss.item(), 4),
                    **parts,
                    "selection_f1": round(sel, 4),
                    "mean_f1": m["mean_f1"],
                    "fa_per_hour": m["fa_per_hour"],
                }
            )
            log.info("%s step %d: dev selection F1 %.3f", label, step, sel)
            tqdm.write(
                f"{label} step {step}: loss {loss.item():.3f} dev selection F1 {sel:.3f}, "
                f"default-decision F1 {m['mean_f1']:.3f} FA/h {m['fa_per_hour']:.1f} "
                f"({time.monotonic() - started:.0f}s)"
            )
            if sel > best_f1:
                best_f1, best_step, best_state, bad = (
                    sel,
                    step,
                    copy.deepcopy(net.state_dict()),
                    0,
                )
                if out_dir is not None:
                    torch.save(
                        {"state": best_state, "step": step}, out_dir / f"{label}-last-best.pt"
                    )
            else:
                bad += 1
                if bad >= cfg.eval.patience:
                    tqdm.write(
                        f"{label}: early stop at step {step} (best {best_f1:.3f} at {best_step})"
                    )
                    break
    bar.close()
    seconds = time.monotonic() - started
    net.load_state_dict(best_state)
    scores = dev_scores(net, dev, lookahead)
    metrics_default = evaluate(scores, dev, cfg.decision)
    tuned = tune_for_recipe(scores, dev, cfg)
    metrics_tuned = evaluate(scores, dev, tuned)
    metrics_default["history"] = history
    return RunResult(
        label, step, best_step, round(seconds, 1), metrics_default, metrics_tuned, tuned, best_state
    )


ABLATIONS: dict[str, dict[str, Any]] = {
    "frame BCE (baseline)": {"kind": "bce"},
    "event-aware (all four terms)": {},
    "event-aware - non-target": {"non_target": 0.0},
    "event-aware - pooled": {"pooled": 0.0},
    "event-aware - smoothness": {"smooth": 0.0},
    "event-aware - cross-trigger": {"cross": 0.0},
}


def ablation_table(results: Sequence[RunResult]) -> str:
    head = (
        "| variant | steps | mean F1 (tuned) | cry F1 | alarm F1 | glass F1 | FA/h "
        "| cross-triggers "
        "| score flicker | mean F1 (default decisions) |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in results:
        m = r.metrics_tuned
        pc = m["per_class"]
        cross = sum(v for row in m["cross_trigger"].values() for v in row.values())
        flick = [pc[c]["score_flicker"] for c in CLASSES if pc[c]["score_flicker"] is not None]
        rows.append(
            f"| {r.name} | {r.steps} | {m['mean_f1']:.3f} | {pc['baby_cry']['f1']:.3f} | "
            f"{pc['smoke_alarm']['f1']:.3f} | {pc['glass_break']['f1']:.3f} | "
            f"{m['fa_per_hour']:.1f} | "
            f"{cross} | {np.mean(flick) if flick else 0:.3f} | {r.metrics_default['mean_f1']:.3f} |"
        )
    return head + "\n".join(rows) + "\n"
