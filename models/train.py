"""`harken train` and `harken export`: train the compact detector, tune its decisions, ship it.

    harken train --config models/configs/default.yaml --data DIR [--out runs/NAME]
                 [--steps N] [--ablation] [--ablation-steps N]
    harken export --checkpoint runs/NAME/best.pt [--out models/harken.onnx]

Training scenes and dev items are generated once per (config, data) and cached as numpy
arrays under the run's cache folder. Every `eval.every_steps` steps the network scores
the dev items, the SAME `service.decision.decide` turns scores into events, and the
mean per-class event F1 (onset within 500 ms) picks the best checkpoint and stops
training early. At the end, per-class decision parameters are tuned on dev for few false
alarms per hour and stored in the checkpoint; `harken export` writes them into the ONNX
contract.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from models import data as D
from models.live_scenes import LiveSceneConfig
from models.losses import EventAwareLoss, EventSpan, LossConfig
from models.net import CompactTCN, FreqConvTCN
from service.audio.features import FeatureParams, LogMel
from service.decision import DecisionParams, EventEnded, decide

log = logging.getLogger(__name__)

CLASSES = D.CLASSES
ONSET_COLLAR_S = 0.5

DEFAULT_DECISIONS: dict[str, DecisionParams] = {
    # Alarms pause up to 5 s between T4 groups: one alarm, one event.
    "baby_cry": DecisionParams(0.5, 0.3, 5, 5, 8, 0.5, 3.0, 0.0),
    "smoke_alarm": DecisionParams(0.5, 0.3, 3, 3, 5, 0.2, 6.0, 0.0),
    # Breaking glass is short: a few confident frames suffice.
    "glass_break": DecisionParams(0.5, 0.3, 2, 2, 4, 0.04, 1.0, 0.0),
}


# --------------------------------------------------------------------------- config
@dataclass
class NetConfig:
    #: "tcn" (CompactTCN: temporal convolutions over mel bands as channels) or
    #: "freqconv" (FreqConvTCN: a 2-D front end over (mel, time), then the TCN).
    kind: str = "tcn"
    freq_channels: tuple[int, ...] = (12, 24, 32, 32)
    channels: int = 40
    dilations: tuple[int, ...] = (1, 2, 4, 8, 16)
    kernel: int = 3
    lookahead_frames: int = 8


@dataclass
class OptConfig:
    steps: int = 6000
    batch: int = 24
    crop_frames: int = 400
    lr: float = 3e-3
    weight_decay: float = 1e-4
    threads: int = 2
    #: Live scenes: processes building batches beside training (0: in the training process).
    workers: int = 1
    #: Stop cleanly (checkpoint saved, resumable) after this much wall time.
    max_minutes: float | None = None


@dataclass
class EvalConfig:
    every_steps: int = 500
    patience: int = 4
    #: The tuning objective's false-alarm budget on dev negatives.
    fa_per_hour_budget: float = 0.5
    on_thresholds: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
    min_duration_scales: tuple[float, ...] = (1.0, 2.0, 4.0)
    #: Upper bounds of the tuned minimum duration per class. Dev holds no real T3/T4
    #: alarm (only continuous sounders): a T3 beep lasts 0.5 s and a T4 beep 0.1 s, so
    #: alarm decisions must not wait for longer unbroken sound than that.
    max_min_duration_s: dict[str, float] = field(default_factory=lambda: {"smoke_alarm": 0.3})
    dev_reps: dict[str, int] = field(
        default_factory=lambda: {"baby_cry": 1, "smoke_alarm": 6, "glass_break": 3}
    )


@dataclass
class TrainConfig:
    name: str = "harken-tcn"
    version: str = "1.0.0"
    seed: int = 7
    data: D.SceneConfig = field(default_factory=D.SceneConfig)
    live: LiveSceneConfig = field(default_factory=LiveSceneConfig)
    net: NetConfig = field(default_factory=NetConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    opt: OptConfig = field(default_factory=OptConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    decision: dict[str, DecisionParams] = field(default_factory=lambda: dict(DEFAULT_DECISIONS))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["decision"] = {k: v.to_dict() for k, v in self.decision.items()}
        return out


def _section(cls: type, raw: Mapping[str, Any] | None, where: str) -> Any:
    raw = dict(raw or {})
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ValueError(
            f"config {where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(names)})"
        )
    default = cls()
    for key, value in raw.items():
        if isinstance(getattr(default, key), tuple) and isinstance(value, list):
            raw[key] = tuple(value)
    return cls(**raw)


def load_config(path: str | Path) -> TrainConfig:
    """Read a training recipe (YAML); unknown keys are rejected with their section named."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config {path} not found")
    raw = yaml.safe_load(path.read_text()) or {}
    return config_from_dict(raw, str(path))


def config_from_dict(raw: Mapping[str, Any], where: str = "config") -> TrainConfig:
    allowed = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ValueError(
            f"{where}: unknown section(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(allowed))})"
        )
    decisions = dict(DEFAULT_DECISIONS)
    for name, values in (raw.get("decision") or {}).items():
        if name not in CLASSES:
            raise ValueError(
                f"{where}: decision.{name}: unknown class (classes: {', '.join(CLASSES)})"
            )
        decisions[name] = DecisionParams.from_dict({**decisions[name].to_dict(), **values})
    return TrainConfig(
        name=str(raw.get("name", "harken-tcn")),
        version=str(raw.get("version", "1.0.0")),
        seed=int(raw.get("seed", 7)),
        data=_section(D.SceneConfig, raw.get("data"), f"{where}: data"),
        live=_section(LiveSceneConfig, raw.get("live"), f"{where}: live"),
        net=_section(NetConfig, raw.get("net"), f"{where}: net"),
        loss=_section(LossConfig, raw.get("loss"), f"{where}: loss"),
        opt=_section(OptConfig, raw.get("opt"), f"{where}: opt"),
        eval=_section(EvalConfig, raw.get("eval"), f"{where}: eval"),
        decision=decisions,
    )


# --------------------------------------------------------------------------- data
@dataclass
class TrainArrays:
    """Cached training scenes, pre-padded for the network's context and look-ahead."""

    features: np.ndarray  # (N, T + receptive_field, n_mels) float16
    target: np.ndarray  # (N, T, C) uint8
    weight: np.ndarray  # (N, T, C) float16
    events: np.ndarray  # (N, E, 4) float32: class, first, end, weight; class -1 = none


def build_net(cfg: TrainConfig, params: FeatureParams) -> CompactTCN | FreqConvTCN:
    net: CompactTCN | FreqConvTCN
    if cfg.net.kind == "freqconv":
        net = FreqConvTCN(
            n_mels=params.n_mels,
            n_classes=len(CLASSES),
            freq_channels=tuple(cfg.net.freq_channels),
            channels=cfg.net.channels,
            dilations=tuple(cfg.net.dilations),
            kernel=cfg.net.kernel,
        )
    elif cfg.net.kind == "tcn":
        net = CompactTCN(
            n_mels=params.n_mels,
            n_classes=len(CLASSES),
            channels=cfg.net.channels,
            dilations=tuple(cfg.net.dilations),
            kernel=cfg.net.kernel,
        )
    else:
        raise ValueError(f"net.kind must be 'tcn' or 'freqconv', got {cfg.net.kind!r}")
    if not 0 <= cfg.net.lookahead_frames <= min(10, net.receptive_field):
        raise ValueError(
            f"net.lookahead_frames must be 0..10 (200 ms), got {cfg.net.lookahead_frames}"
        )
    return net


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
    silence = LogMel(params).silence_frame
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
    n = feats.shape[0]
    # A stream starts with its first frame repeated (service.detector pads the same way).
    pad_before = np.repeat(feats[:, :1], context, axis=1)
    pad_after = np.broadcast_to(silence.astype(np.float16), (n, lookahead, feats.shape[2]))
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
def dev_scores(
    net: CompactTCN | FreqConvTCN, dev: Sequence[D.DevItem], lookahead: int
) -> list[np.ndarray]:
    """Frame scores (T, C) of every dev item, padded exactly as service.detector does."""
    silence = LogMel(FeatureParams()).silence_frame
    context = net.receptive_field - lookahead
    net.eval()
    out = []
    with torch.no_grad():
        for item in dev:
            feats = item.features.astype(np.float32)
            x = np.concatenate(
                [np.repeat(feats[:1], context, axis=0), feats, np.tile(silence, (lookahead, 1))]
            )
            out.append(torch.sigmoid(net(torch.from_numpy(x)[None]))[0].numpy())
    return out


def _match(
    truth: list[tuple[float, float]], found: list[EventEnded]
) -> tuple[list[tuple[int, int]], list[int]]:
    """Greedy one-to-one matching of detections to truth by onset distance <= collar."""
    pairs = sorted(
        (
            (abs(f.start_s - t[0]), ti, fi)
            for ti, t in enumerate(truth)
            for fi, f in enumerate(found)
            if abs(f.start_s - t[0]) <= ONSET_COLLAR_S
        ),
    )
    used_t: set[int] = set()
    used_f: set[int] = set()
    matched = []
    for _, ti, fi in pairs:
        if ti not in used_t and fi not in used_f:
            used_t.add(ti)
            used_f.add(fi)
            matched.append((ti, fi))
    return matched, [fi for fi in range(len(found)) if fi not in used_f]


def event_metrics(
    dev: Sequence[D.DevItem],
    detections: Sequence[Sequence[EventEnded]],
    class_names: Sequence[str] = CLASSES,
) -> dict[str, Any]:
    """Per-class event P/R/F1 (500 ms onset collar), FA/h on negatives, cross-triggers,
    median latency and flicker (extra same-class detections per matched true event)."""
    stats = {
        c: {"tp": 0, "fp": 0, "fn": 0, "latency": [], "fragments": [], "crossings": [], "neg_fp": 0}
        for c in class_names
    }
    cross = {a: dict.fromkeys(class_names, 0) for a in class_names}
    neg_hours = sum(it.duration_s for it in dev if it.negative_only) / 3600
    for item, found in zip(dev, detections, strict=True):
        for c in class_names:
            truth = [(t[1], t[2]) for t in item.truth if t[0] == c]
            mine = [d for d in found if d.class_name == c]
            matched, unmatched = _match(truth, mine)
            s = stats[c]
            s["tp"] += len(matched)
            s["fn"] += len(truth) - len(matched)
            s["fp"] += len(unmatched)
            if item.negative_only:
                s["neg_fp"] += len(unmatched)
            for ti, fi in matched:
                s["latency"].append(mine[fi].detected_s - truth[ti][0])
                s["crossings"].append(mine[fi].flicker)
                on, off = truth[ti]
                s["fragments"].append(sum(1 for d in mine if d.start_s < off and d.end_s > on) - 1)
            for fi in unmatched:
                d = mine[fi]
                for other, on, off in item.truth:
                    if (
                        other != c
                        and other in cross
                        and d.start_s < off + ONSET_COLLAR_S
                        and d.end_s > on
                    ):
                        cross[other][c] += 1
                        break
    per_class = {}
    for c, s in stats.items():
        p = s["tp"] / max(s["tp"] + s["fp"], 1)
        r = s["tp"] / max(s["tp"] + s["fn"], 1)
        per_class[c] = {
            "precision": round(p, 3),
            "recall": round(r, 3),
            "f1": round(2 * p * r / max(p + r, 1e-9), 3),
            "tp": s["tp"],
            "fp": s["fp"],
            "fn": s["fn"],
            "fa_per_hour": round(s["neg_fp"] / max(neg_hours, 1e-9), 2),
            "median_latency_s": round(float(np.median(s["latency"])), 3) if s["latency"] else None,
            "flicker": round(float(np.mean(s["fragments"])), 3) if s["fragments"] else None,
            "score_flicker": (round(float(np.mean(s["crossings"])), 3) if s["crossings"] else None),
        }
    total_neg_fp = sum(s["neg_fp"] for s in stats.values())
    return {
        "per_class": per_class,
        "mean_f1": round(float(np.mean([v["f1"] for v in per_class.values()])), 4),
        "fa_per_hour": round(total_neg_fp / max(neg_hours, 1e-9), 2),
        "negative_hours": round(neg_hours, 3),
        "cross_trigger": cross,
    }


def run_decisions(
    scores: Sequence[np.ndarray],
    params: Mapping[str, DecisionParams],
    class_names: Sequence[str] = CLASSES,
) -> list[list[EventEnded]]:
    """The daemon's decisions (service.decision.decide) on each dev item's scores."""
    fp = FeatureParams()
    return [decide(s, class_names, params, fp.hop_s, float(fp.frame_center_s(0))) for s in scores]


def evaluate(
    scores: Sequence[np.ndarray], dev: Sequence[D.DevItem], params: Mapping[str, DecisionParams]
) -> dict[str, Any]:
    return event_metrics(dev, run_decisions(scores, params))


def selection_f1(
    scores: Sequence[np.ndarray],
    dev: Sequence[D.DevItem],
    base: Mapping[str, DecisionParams],
    thresholds: Sequence[float] = (0.5, 0.7, 0.9),
) -> float:
    """Early-stopping metric: per class the best dev event F1 over a few on-thresholds
    (false alarms on negatives count against precision), averaged over classes. A quick
    stand-in for the full tuning, so that calibration alone does not pick checkpoints."""
    f1s = []
    for ci, c in enumerate(CLASSES):
        single = [s[:, ci : ci + 1] for s in scores]
        best = 0.0
        for on in thresholds:
            b = base[c]
            cand = replace(
                b, on_threshold=on, off_threshold=round(b.off_threshold / b.on_threshold * on, 3)
            )
            m = event_metrics(dev, run_decisions(single, {c: cand}, (c,)), (c,))
            best = max(best, m["per_class"][c]["f1"])
        f1s.append(best)
    return float(np.mean(f1s))


def tune_decisions(
    scores: Sequence[np.ndarray],
    dev: Sequence[D.DevItem],
    base: Mapping[str, DecisionParams],
    on_thresholds: Sequence[float],
    fa_budget: float,
    dur_scales: Sequence[float] = (1.0, 2.0, 4.0),
    max_min_duration_s: Mapping[str, float] | None = None,
) -> dict[str, DecisionParams]:
    """Per class, the on-threshold, minimum duration and smoothing with the best dev F1 among those
    whose false alarms on dev negatives stay within `fa_budget` per hour; when none does,
    the best of F1 - 0.002 * FA/h (each false alarm per hour costs a little F1)."""
    tuned = dict(base)
    for ci, c in enumerate(CLASSES):
        single = [s[:, ci : ci + 1] for s in scores]
        best: tuple[tuple[float, float], DecisionParams] | None = None
        for on in on_thresholds:
            for dur_scale, smooth_scale in itertools.product(dur_scales, (1, 2)):
                b = base[c]
                cand = replace(
                    b,
                    on_threshold=on,
                    off_threshold=round(min(b.off_threshold / b.on_threshold * on, on), 3),
                    min_duration_s=round(
                        min(b.min_duration_s * dur_scale, (max_min_duration_s or {}).get(c, 1e9)),
                        3,
                    ),
                    smoothing_frames=b.smoothing_frames * smooth_scale,
                )
                m = event_metrics(dev, run_decisions(single, {c: cand}, (c,)), (c,))
                pc = m["per_class"][c]
                key = (
                    # Within budget only counts for settings that find something:
                    # a threshold nothing reaches has no false alarms, and no use.
                    1.0 if pc["fa_per_hour"] <= fa_budget and pc["tp"] > 0 else 0.0,
                    pc["f1"] - 0.002 * pc["fa_per_hour"],
                )
                if best is None or key > best[0]:
                    best = (key, cand)
        assert best is not None
        tuned[c] = best[1]
    return tuned


# --------------------------------------------------------------------------- training
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
    loss_fn = EventAwareLoss(cfg.loss, len(CLASSES))
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
            sel = selection_f1(scores, dev, cfg.decision)
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
    tuned = tune_decisions(
        scores,
        dev,
        cfg.decision,
        cfg.eval.on_thresholds,
        cfg.eval.fa_per_hour_budget,
        cfg.eval.min_duration_scales,
        cfg.eval.max_min_duration_s,
    )
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


def save_checkpoint(
    path: Path, cfg: TrainConfig, result: RunResult, info: Mapping[str, Any], command: str
) -> None:
    net = build_net(cfg, FeatureParams())
    torch.save(
        {
            "config": cfg.to_dict(),
            "state": result.state,
            "tuned": {k: v.to_dict() for k, v in result.tuned.items()},
            "metrics_tuned": result.metrics_tuned,
            "metrics_default": result.metrics_default,
            "steps": result.steps,
            "best_step": result.best_step,
            "seconds": result.seconds,
            "data": dict(info),
            "command": command,
            "parameters": sum(p.numel() for p in net.parameters()),
            "macs_per_frame": net.macs_per_frame(),
        },
        path,
    )


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


def cmd_train(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    cfg = load_config(args.config)
    if args.steps:
        cfg = replace(cfg, opt=replace(cfg.opt, steps=args.steps))
    torch.set_num_threads(cfg.opt.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    out = Path(args.out or f"runs/{cfg.name}")
    out.mkdir(parents=True, exist_ok=True)
    net = build_net(cfg, FeatureParams())
    n_params = sum(p.numel() for p in net.parameters())
    print(
        f"network: {n_params} parameters, {net.macs_per_frame()} MAC/frame "
        f"({net.macs_per_frame() * 50 / 1e6:.2f} M MAC/s), "
        f"receptive field {net.receptive_field} frames, "
        f"look-ahead {cfg.net.lookahead_frames} frames"
    )
    if cfg.live.enabled:
        command = " ".join(["harken", *sys.argv[1:]]) if args.command_line is None else args.command_line
        return train_live_command(cfg, args, out, command, n_params)
    t0 = time.monotonic()
    arrays, dev, info = prepare_data(
        cfg,
        Path(args.data),
        Path(args.cache or out / "cache"),
        net.receptive_field,
        cfg.net.lookahead_frames,
    )
    print(
        f"data ready in {time.monotonic() - t0:.0f}s: {arrays.features.shape[0]} scenes, "
        f"dev {info['dev']}"
    )
    command = (
        " ".join(["harken", *sys.argv[1:]]) if args.command_line is None else args.command_line
    )
    if args.ablation:
        steps = args.ablation_steps or cfg.opt.steps
        results = []
        for label, overrides in ABLATIONS.items():
            vcfg = replace(cfg, loss=replace(cfg.loss, **overrides))
            result = train_run(vcfg, arrays, dev, steps, label)
            save_checkpoint(out / f"ablation-{len(results)}.pt", vcfg, result, info, command)
            results.append(result)
        table = ablation_table(results)
        (out / "ablation.md").write_text(table)
        (out / "ablation.json").write_text(
            json.dumps(
                [
                    {
                        "name": r.name,
                        "steps": r.steps,
                        "best_step": r.best_step,
                        "seconds": r.seconds,
                        "tuned": r.metrics_tuned,
                        "default": {k: v for k, v in r.metrics_default.items() if k != "history"},
                    }
                    for r in results
                ],
                indent=1,
            )
        )
        print(table)
        return 0
    result = train_run(cfg, arrays, dev, cfg.opt.steps, "train", out)
    save_checkpoint(out / "best.pt", cfg, result, info, command)
    report = {
        "steps": result.steps,
        "best_step": result.best_step,
        "train_seconds": result.seconds,
        "parameters": n_params,
        "macs_per_frame": net.macs_per_frame(),
        "data": info,
        "dev_tuned": result.metrics_tuned,
        "dev_default": result.metrics_default,
        "tuned_decisions": {k: v.to_dict() for k, v in result.tuned.items()},
    }
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(
        f"best dev mean F1 {result.metrics_tuned['mean_f1']:.3f} (tuned decisions), "
        f"FA/h {result.metrics_tuned['fa_per_hour']:.2f}; checkpoint {out / 'best.pt'}"
    )
    return 0


def live_dev_set(
    cfg: TrainConfig, data_dir: Path, negatives_dir: Path | None, cache_dir: Path
) -> tuple[list[D.DevItem], dict[str, Any]]:
    """Dev scenes from the shared data's dev split plus every dev negative stream (cached)."""
    import pickle

    from models.negatives import NegativePool
    from models.trainer import dev_negative_items

    params = FeatureParams()
    manifest = data_dir / "MANIFEST.csv"
    stat = manifest.stat()
    key = D.cache_key(
        "live-dev-1",
        asdict(cfg.eval)["dev_reps"],
        cfg.data.licences,
        str(data_dir.resolve()),
        stat.st_size,
        stat.st_mtime,
        str(negatives_dir.resolve()) if negatives_dir else None,
        params.to_dict(),
    )
    path = cache_dir / f"dev-{key}.pkl"
    if path.is_file():
        with path.open("rb") as fh:
            return pickle.load(fh)
    clips = D.read_clips(data_dir)
    dev_bank = D.ClipBank(D.select(clips, "dev", cfg.data.licences))
    dev = D.build_dev(dev_bank, seed=cfg.data.seed + 1, params=params, reps=cfg.eval.dev_reps)
    info: dict[str, Any] = {"dev_bank": dev_bank.summary()}
    if negatives_dir is not None:
        pool = NegativePool.load(negatives_dir, "dev", cache_dir, cfg.data.licences)
        dev += dev_negative_items(pool, params)
        info["dev_negatives_hours"] = round(pool.hours, 3)
        info["dev_negatives_by_kind"] = pool.hours_by_kind()
    info["dev"] = D.dev_summary(dev)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        pickle.dump((dev, info), fh)
    return dev, info


def train_live_command(
    cfg: TrainConfig, args: argparse.Namespace, out: Path, command: str, n_params: int
) -> int:
    """`harken train` with `live.enabled`: new scenes every step, resumable, time-boxed."""
    from models.live_scenes import LiveSceneMaker
    from models.negatives import NegativePool
    from models.trainer import train_live

    params = FeatureParams()
    data_dir = Path(args.data)
    negatives_dir = Path(args.negatives) if args.negatives else None
    cache_dir = Path(args.cache or out / "cache")
    t0 = time.monotonic()
    clips = D.read_clips(data_dir)
    train_clips = D.select(clips, "train", cfg.data.licences)
    if not train_clips:
        raise ValueError(f"{data_dir / 'MANIFEST.csv'}: no train clips (licences={cfg.data.licences})")
    bank = D.ClipBank(train_clips)
    pool = NegativePool.load(negatives_dir, "train", cache_dir, cfg.data.licences) if negatives_dir else None
    dev, dev_info = live_dev_set(cfg, data_dir, negatives_dir, cache_dir)
    torch.manual_seed(cfg.seed)  # the initial weights come from the recipe's seed
    net = build_net(cfg, params)
    hard: list[tuple[int, int]] = []
    if args.hard_negatives:
        hard = [tuple(h) for h in json.loads(Path(args.hard_negatives).read_text())["windows"]]
    maker = LiveSceneMaker(
        bank, pool, cfg.data, cfg.live, cfg.opt.crop_frames, net.receptive_field,
        cfg.net.lookahead_frames, params, hard,
    )
    info = {
        "train": bank.summary(),
        "train_negatives_hours": round(pool.hours, 3) if pool else 0.0,
        "train_negatives_by_kind": pool.hours_by_kind() if pool else {},
        **dev_info,
        "licences": cfg.data.licences,
        "sources": sorted({f"{c.source} | {c.licence}" for c in clips if c.split in ("train", "dev")}),
        "hard_negative_windows": len(hard),
    }
    print(f"data ready in {time.monotonic() - t0:.0f}s: dev {info['dev']}")
    init_state = None
    if args.init:
        init_state = torch.load(args.init, map_location="cpu", weights_only=False)["state"]
    else:
        # Normalisation statistics (inside the graph) from a sample of training scenes.
        rng = np.random.default_rng(cfg.seed)
        sample = np.concatenate([maker.make(rng).features for _ in range(48)])
        net.feature_mean.copy_(torch.from_numpy(sample.mean(axis=0)))
        net.feature_std.copy_(torch.from_numpy(sample.std(axis=0)).clamp_min(1e-3))

    def evaluate_net(model: torch.nn.Module) -> tuple[float, dict[str, Any]]:
        scores = dev_scores(model, dev, cfg.net.lookahead_frames)  # type: ignore[arg-type]
        m = evaluate(scores, dev, cfg.decision)
        return selection_f1(scores, dev, cfg.decision), {
            "default_f1": {c: v["f1"] for c, v in m["per_class"].items()},
            "default_fa_per_hour": m["fa_per_hour"],
        }

    summary = train_live(
        net,
        EventAwareLoss(cfg.loss, len(CLASSES)),
        maker,
        steps=cfg.opt.steps,
        batch=cfg.opt.batch,
        lr=cfg.opt.lr,
        weight_decay=cfg.opt.weight_decay,
        seed=cfg.seed,
        out_dir=out,
        evaluate=evaluate_net,
        every_steps=cfg.eval.every_steps,
        patience=cfg.eval.patience,
        max_minutes=cfg.opt.max_minutes if args.max_minutes is None else args.max_minutes,
        workers=cfg.opt.workers,
        init_state=init_state,
    )
    scores = dev_scores(net, dev, cfg.net.lookahead_frames)
    metrics_default = evaluate(scores, dev, cfg.decision)
    tuned = tune_decisions(
        scores, dev, cfg.decision, cfg.eval.on_thresholds, cfg.eval.fa_per_hour_budget,
        cfg.eval.min_duration_scales, cfg.eval.max_min_duration_s,
    )
    metrics_tuned = evaluate(scores, dev, tuned)
    metrics_default["history"] = summary["history"]
    result = RunResult(
        "train", summary["steps"], summary["best_step"], summary["seconds"], metrics_default,
        metrics_tuned, tuned, copy.deepcopy(net.state_dict()),
    )
    save_checkpoint(out / "best.pt", cfg, result, info, command)
    report = {
        **{k: v for k, v in summary.items() if k != "history"},
        "parameters": n_params,
        "macs_per_frame": net.macs_per_frame(),
        "data": info,
        "dev_tuned": metrics_tuned,
        "dev_default": {k: v for k, v in metrics_default.items() if k != "history"},
        "tuned_decisions": {k: v.to_dict() for k, v in tuned.items()},
    }
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(
        f"stopped by {summary['stopped']} at step {summary['steps']} (best {summary['best_step']}); "
        f"dev mean F1 {metrics_tuned['mean_f1']:.3f} (tuned), FA/h {metrics_tuned['fa_per_hour']:.2f}; "
        f"checkpoint {out / 'best.pt'}"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from models.export import export_onnx

    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    cfg = config_from_dict({k: v for k, v in ckpt["config"].items()}, str(args.checkpoint))
    net = build_net(cfg, FeatureParams())
    net.load_state_dict(ckpt["state"])
    net.eval()
    decisions = {k: DecisionParams.from_dict(v) for k, v in ckpt["tuned"].items()}
    mt = ckpt["metrics_tuned"]
    if getattr(args, "data", None):
        # Re-tune the decisions on dev with this code's tuning rules (the scenes cache of
        # the training run is reused when --cache points at it).
        torch.set_num_threads(cfg.opt.threads)
        _, dev, _ = prepare_data(
            cfg,
            Path(args.data),
            Path(args.cache or Path(args.checkpoint).parent / "cache"),
            net.receptive_field,
            cfg.net.lookahead_frames,
        )
        scores = dev_scores(net, dev, cfg.net.lookahead_frames)
        decisions = tune_decisions(
            scores,
            dev,
            cfg.decision,
            cfg.eval.on_thresholds,
            cfg.eval.fa_per_hour_budget,
            cfg.eval.min_duration_scales,
            cfg.eval.max_min_duration_s,
        )
        mt = evaluate(scores, dev, decisions)
        report = Path(args.out).with_suffix(".dev.json")
        report.write_text(
            json.dumps(
                {
                    "dev_tuned": mt,
                    "tuned_decisions": {k: v.to_dict() for k, v in decisions.items()},
                },
                indent=1,
            )
        )
        print(
            f"re-tuned decisions on dev: mean F1 {mt['mean_f1']:.3f}, FA/h "
            f"{mt['fa_per_hour']:.1f} (figures in {report})"
        )
    training = {
        "command": ckpt.get("command", ""),
        "steps": ckpt["steps"],
        "best_step": ckpt["best_step"],
        "train_seconds": ckpt["seconds"],
        "parameters": ckpt["parameters"],
        "macs_per_frame": ckpt["macs_per_frame"],
        "loss": cfg.loss.kind,
        "seed": cfg.seed,
        "licences": cfg.data.licences,
        "weights_licence": (
            "openly licensed sources only; see models/MODEL_CARD.md"
            if cfg.data.licences == "open"
            else "trained on clips without licence and CC-BY-NC clips: non-commercial "
            "research and evaluation only; see models/MODEL_CARD.md"
        ),
        "data": {k: ckpt["data"].get(k) for k in ("train", "dev", "scene_seconds")},
        "dev_mean_f1": mt["mean_f1"],
        "dev_fa_per_hour": mt["fa_per_hour"],
        "dev_f1": {c: v["f1"] for c, v in mt["per_class"].items()},
    }
    out = Path(args.out)
    export_onnx(
        net, out, CLASSES, cfg.net.lookahead_frames, decisions, cfg.name, cfg.version, training
    )
    print(
        f"wrote {out} ({out.stat().st_size} bytes): {ckpt['parameters']} parameters, "
        f"{ckpt['macs_per_frame']} MAC/frame, dev mean F1 {mt['mean_f1']:.3f}"
    )
    return 0


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=Path(__file__).parent / "configs" / "default.yaml"
    )
    parser.add_argument(
        "--data", type=Path, required=True, help="folder with MANIFEST.csv and the audio"
    )
    parser.add_argument("--out", type=Path, help="run folder (default runs/<config name>)")
    parser.add_argument("--cache", type=Path, help="scene cache folder (default <out>/cache)")
    parser.add_argument("--steps", type=int, help="override opt.steps")
    parser.add_argument(
        "--negatives", type=Path, help="built negatives folder (NEGATIVES.csv) for backgrounds and dev FA/h"
    )
    parser.add_argument("--max-minutes", type=float, help="stop cleanly after this wall time (resumable)")
    parser.add_argument("--init", type=Path, help="start from this checkpoint's weights (fine-tuning)")
    parser.add_argument("--hard-negatives", type=Path, help="mined hard-negative windows (JSON)")
    parser.add_argument(
        "--ablation", action="store_true", help="train every loss variant, write ablation.md"
    )
    parser.add_argument(
        "--ablation-steps", type=int, help="steps per ablation variant (default opt.steps)"
    )
    parser.set_defaults(command_line=None)


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "harken.onnx")
    parser.add_argument("--data", type=Path, help="re-tune decisions on this data's dev split")
    parser.add_argument("--cache", type=Path, help="scene cache (default: next to the checkpoint)")


def add_mine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="best.pt of a training run")
    parser.add_argument("--negatives", type=Path, required=True, help="built negatives folder")
    parser.add_argument("--out", type=Path, required=True, help="JSON of mined windows")
    parser.add_argument("--cache", type=Path, help="negatives cache folder (default: in the negatives folder)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    add_train_arguments(sub.add_parser("train"))
    add_export_arguments(sub.add_parser("export"))
    add_mine_arguments(sub.add_parser("mine"))
    args = parser.parse_args(argv)
    if args.cmd == "mine":
        from models.mining import cmd_mine

        return cmd_mine(args)
    return cmd_train(args) if args.cmd == "train" else cmd_export(args)


if __name__ == "__main__":
    sys.exit(main())
