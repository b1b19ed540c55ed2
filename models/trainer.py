"""The training loop on scenes made on the fly: resumable, seeded, time-boxed.

One worker process builds batches of new scenes (`models.live_scenes`) while the main
process trains; batch i is built from a generator seeded by (seed, i), so a run resumed
from its `last.pt` sees the very batches an uninterrupted run would have seen. Every
`eval.every_steps` steps the network scores the dev set (dev scenes + hours of dev
negatives), the daemon's own decisions turn scores into events, and the selection
metric keeps the best checkpoint (`best.pt`).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from models import data as D
from models.cached import RunResult
from models.config import CLASSES, TrainConfig, build_net
from models.live_scenes import LiveScene, LiveSceneMaker
from models.losses import EventAwareLoss, EventSpan, distil_loss, teacher_embedding_loss, teacher_loss
from models.tuning import dev_scores, evaluate, recipe_selection, tune_for_recipe
from service.audio.features import FeatureParams

if TYPE_CHECKING:
    from models.negatives import NegativePool

log = logging.getLogger(__name__)


Batch = tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, list[EventSpan], list[EventSpan], torch.Tensor | None, torch.Tensor | None
]


def collate(scenes: Sequence[LiveScene]) -> Batch:
    """Scenes -> (features, targets, weights, event spans, onset spans, teacher scores,
    teacher mask) of one batch; the last two are None without a teacher."""
    x = torch.from_numpy(np.stack([s.features for s in scenes]).astype(np.float32))
    y = torch.from_numpy(np.stack([s.target for s in scenes]).astype(np.float32))
    w = torch.from_numpy(np.stack([s.weight for s in scenes]).astype(np.float32))
    events = [(b, c, f, e, wt) for b, s in enumerate(scenes) for c, f, e, wt in s.events]
    onsets = [(b, c, f, e, wt) for b, s in enumerate(scenes) for c, f, e, wt in s.onsets]
    teacher = mask = None
    if all(s.teacher is not None and s.teacher_mask is not None for s in scenes):
        teacher = torch.from_numpy(np.stack([s.teacher for s in scenes]).astype(np.float32))  # type: ignore[misc]
        # float32 throughout: pool scenes hold a bool mask, weighted confuser scenes weights
        mask = torch.from_numpy(np.stack([s.teacher_mask for s in scenes]).astype(np.float32))  # type: ignore[misc]
    return x, y, w, events, onsets, teacher, mask


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


def _fit_teacher_head(net: torch.nn.Module, head: torch.nn.Module, maker: LiveSceneMaker,
                      batch: int, seed: int, n_batches: int, label: str) -> None:
    """Fit the teacher head to the (fine-tuned) network's features by ridge regression over
    `n_batches` batches of scenes drawn apart from the training stream (their own seed)."""
    from models.teacher import fit_linear_head

    stream = batches(maker, batch, seed + 7919, 0, 0)
    features, targets, masks = [], [], []
    was_training = net.training
    net.eval()  # the starting network's own normalisation, no running statistics touched
    with torch.no_grad():
        for _ in range(n_batches):
            x, *_, teacher, mask = next(stream)
            if teacher is None or mask is None:
                raise ValueError("loss.teacher_head_fit_batches: the scenes carry no teacher rows")
            features.append(net.features(x))  # type: ignore[operator]
            targets.append(teacher)
            masks.append(mask)
    net.train(was_training)
    before, after = fit_linear_head(head, features, targets, masks)
    tqdm.write(f"{label}: teacher head fitted to the starting network over {n_batches} batches "
               f"(mean squared error {before:.3f} -> {after:.3f})")


def _class_indices(names: Sequence[str], key: str) -> list[int]:
    """The class indices of a recipe option that names classes; unknown names are refused."""
    unknown = sorted(set(names) - set(CLASSES))
    if unknown:
        raise ValueError(f"config: {key} names unknown classes {unknown} (classes: {list(CLASSES)})")
    return [CLASSES.index(c) for c in names]


def hold_head_rows(net: torch.nn.Module, trained_rows: Sequence[int]) -> Callable[[], None]:
    """A function that puts back the rows of `net.head` not in `trained_rows` as they are now."""
    head = net.head  # type: ignore[union-attr]
    held = [i for i in range(head.weight.shape[0]) if i not in set(trained_rows)]
    weight, bias = head.weight.detach()[held].clone(), head.bias.detach()[held].clone()

    def put_back() -> None:
        with torch.no_grad():
            head.weight[held] = weight
            head.bias[held] = bias

    return put_back


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
    stop_at_step: int | None = None,
    workers: int = 1,
    label: str = "train",
    init_state: dict[str, torch.Tensor] | None = None,
    config_dict: dict[str, Any] | None = None,
    teacher_head: torch.nn.Module | None = None,
    teacher_weight: float = 0.0,
    teacher_kind: str = "scores",
    distil_from: Callable[[np.ndarray], np.ndarray] | None = None,
    distil_weight: float = 0.0,
    distil_classes: Sequence[int] | None = None,
    distil_positive: float = 1.0,
    teacher_head_fit_batches: int = 0,
    head_rows: Sequence[int] | None = None,
    select_average: int = 1,
) -> dict[str, Any]:
    """Train (or resume from OUT_DIR/last.pt); returns the run's summary. OUT_DIR/best.pt holds
    the best network state by the `evaluate` selection metric. With `select_average` N > 1
    (`eval.select_average`) each evaluation judges, and may keep, the element-wise mean of the
    network states at the last N evaluations (this one included; fewer at the run's start);
    training goes on from the network as it is. `teacher_head` (training
    only, models/teacher.py) reads the network's temporal features and learns the teacher's
    scores (or embedding, `teacher_kind`) with weight `teacher_weight`. `distil_from`
    (models/teacher.harken_scorer) scores each batch with another harken model, whose scores
    the network learns with weight `distil_weight` (of the class indices `distil_classes`,
    or all), frames it scores above 0.5 weighing `distil_positive`. Fine-tuning from
    `init_state` with a teacher head and `teacher_head_fit_batches` > 0 fits the head to the
    starting network first (`loss.teacher_head_fit_batches`). `head_rows` (class indices,
    `opt.train_head_rows`): only those rows of `net.head` learn; the rest of the network,
    its normalisation statistics included, is held as it starts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    last_file, best_file = out_dir / "last.pt", out_dir / "best-state.pt"
    learning = list(net.parameters())
    if head_rows is not None:
        for param in learning:
            param.requires_grad_(False)
        learning = [net.head.weight, net.head.bias]  # type: ignore[union-attr]
        for param in learning:
            param.requires_grad_(True)
    trained = learning + (list(teacher_head.parameters()) if teacher_head is not None else [])
    opt = torch.optim.AdamW(trained, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 2), pct_start=0.05)
    state: dict[str, Any] = {"step": 0, "best": -1.0, "best_step": 0, "bad": 0, "history": [], "seconds": 0.0}
    if last_file.is_file():
        saved = torch.load(last_file, map_location="cpu", weights_only=False)
        net.load_state_dict(saved["net"])
        if teacher_head is not None:
            teacher_head.load_state_dict(saved["teacher_head"])
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        state = saved["state"]
        torch.set_rng_state(saved["torch_rng"])
        tqdm.write(f"{label}: resumed at step {state['step']} (best {state['best']:.3f} at {state['best_step']})")
    elif init_state is not None:
        net.load_state_dict(init_state)
        if teacher_head is not None and teacher_head_fit_batches > 0:
            _fit_teacher_head(net, teacher_head, maker, batch, seed, teacher_head_fit_batches, label)
    else:
        torch.manual_seed(seed)
    hold_rows = hold_head_rows(net, head_rows) if head_rows is not None else None
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
                "config": config_dict,
                "net": net.state_dict(),
                **({"teacher_head": teacher_head.state_dict()} if teacher_head is not None else {}),
                "opt": opt.state_dict(),
                "sched": sched.state_dict(),
                "state": state,
                "torch_rng": torch.get_rng_state(),
            },
            tmp,
        )
        tmp.replace(last_file)

    while state["step"] < steps:
        # Held normalisation statistics when only head rows learn (eval mode keeps them).
        net.train(hold_rows is None)
        x, y, w, events, onsets, teacher, teacher_mask = next(stream)
        if teacher_head is not None and teacher is not None and teacher_mask is not None:
            features = net.features(x)  # type: ignore[operator]
            logits = net.head(features).transpose(1, 2)  # type: ignore[operator]
            loss, parts = loss_fn(logits, y, w, events, onsets)
            learn = teacher_embedding_loss if teacher_kind == "embedding" else teacher_loss
            learnt = learn(teacher_head(features).transpose(1, 2), teacher, teacher_mask)
            loss = loss + teacher_weight * learnt
            parts = {**parts, "teacher": float(learnt.item())}
        else:
            logits = net(x)
            loss, parts = loss_fn(logits, y, w, events, onsets)
        if distil_from is not None:
            imitated = distil_loss(
                logits, torch.from_numpy(distil_from(x.numpy())), distil_classes, distil_positive
            )
            loss = loss + distil_weight * imitated
            parts = {**parts, "distil": float(imitated.item())}
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 5.0)
        opt.step()
        if hold_rows is not None:
            hold_rows()  # AdamW's weight decay moves rows without a gradient too
        sched.step()
        state["step"] += 1
        step = state["step"]
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", best=f"{state['best']:.3f}")
        if step % every_steps == 0 or step == steps:
            # The network at every evaluation (230 kB each): candidates for weight averaging.
            (out_dir / "evals").mkdir(exist_ok=True)
            torch.save(net.state_dict(), out_dir / "evals" / f"step-{step}.pt")
            averaged = [*(int(e["step"]) for e in state["history"]), step][-select_average:]
            judged = averaged_network(net, out_dir / "evals", averaged)
            selection, metrics = evaluate(judged)
            entry = {
                "step": step,
                "loss": round(loss.item(), 4),
                **{k: round(v, 4) for k, v in parts.items()},
                "selection": round(selection, 4),
                "seconds": round(seconds_before + time.monotonic() - started, 1),
                **({"averaged_steps": averaged} if select_average > 1 else {}),
                **metrics,
            }
            state["history"].append(entry)
            tqdm.write(f"{label} {json.dumps(entry)}")
            if selection > state["best"]:
                state.update(best=selection, best_step=step, bad=0)
                torch.save(copy.deepcopy(judged.state_dict()), best_file)
            else:
                state["bad"] += 1
            save_last()
            if state["bad"] >= patience:
                stopped = "patience"
                break
            if deadline is not None and time.monotonic() > deadline:
                stopped = "time"
                break
            if stop_at_step is not None and step >= stop_at_step:
                # The schedule stays that of `steps`: a run stopped here and resumed later
                # continues as if it had never stopped.
                stopped = "stop_at_step"
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


def average_states(files: list[Path]) -> dict[str, torch.Tensor]:
    """The element-wise mean of network states (weight averaging of a run's late
    evaluations; batch-norm statistics are averaged alike)."""
    states = [torch.load(f, map_location="cpu", weights_only=True) for f in files]
    for f, state in zip(files, states, strict=True):
        if state.keys() != states[0].keys():
            raise ValueError(f"{f}: not the same network as {files[0]}")
    return {
        k: (sum(s[k].double() for s in states) / len(states)).to(states[0][k].dtype) for k in states[0]
    }


def averaged_network(net: torch.nn.Module, evals_dir: Path, steps: Sequence[int]) -> torch.nn.Module:
    """The network to judge at an evaluation: `net` itself for one step, else a copy holding
    the mean of the states a run saved at those steps (EVALS_DIR/step-N.pt); `net` keeps its
    own weights either way, so training goes on from them."""
    if len(steps) == 1:
        return net
    judged = copy.deepcopy(net)
    judged.load_state_dict(average_states([evals_dir / f"step-{s}.pt" for s in steps]))
    return judged


def dev_negative_items(
    pool: NegativePool, params: Any, stream_s: float = 600.0, frames: D.FramesOf | None = None
) -> list[D.DevItem]:
    """The dev negatives as 10-minute streams (negative-only dev items, for false alarms
    per hour); `frames` as in `models.data.build_dev` (default: log-mel)."""
    from service.audio.features import LogMel

    frames = frames or LogMel(params).frames
    n = int(stream_s * D.SAMPLE_RATE)
    total = pool.audio.shape[0]
    items = []
    for i, start in enumerate(range(0, total, n)):
        audio = pool.samples(start, min(start + n, total))
        if audio.shape[0] < D.SAMPLE_RATE:
            continue
        feats = frames(audio).astype(np.float16)  # half the memory of 4 h of frames
        items.append(D.DevItem(f"debian-negatives:{i}", feats, [], audio.shape[0] / D.SAMPLE_RATE, True))
    return items


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


def _dev_key(cfg: TrainConfig, data_dir: Path, params: FeatureParams, *more: Any) -> str:
    """Cache key of dev items built from the shared data's dev split with a recipe's settings."""
    manifest = data_dir / "MANIFEST.csv"
    stat = manifest.stat()
    return D.cache_key(
        asdict(cfg.eval)["dev_reps"], cfg.data.licences, str(data_dir.resolve()),
        stat.st_size, stat.st_mtime, params.to_dict(), *more,
    )


def scored_scene_draws(
    cfg: TrainConfig, data_dir: Path, seeds: Sequence[int], cache_dir: Path,
    score: Callable[[np.ndarray], np.ndarray], frames: D.FramesOf | None = None, frames_key: str | None = None,
) -> list[tuple[int, list[np.ndarray], list[D.DevItem]]]:
    """`dev_scene_draw` for each of `seeds`, each item scored by `score` (its rows -> scores):
    (seed, scores, items) per draw, as rule 5 and the tuning read them."""
    out = []
    for seed in seeds:
        items = dev_scene_draw(cfg, data_dir, seed, cache_dir, frames, frames_key)
        out.append((seed, [score(item.features) for item in items], items))
    return out


def dev_scene_draw(
    cfg: TrainConfig, data_dir: Path, seed: int, cache_dir: Path,
    frames: D.FramesOf | None = None, frames_key: str | None = None, dev_bank: D.ClipBank | None = None,
) -> list[D.DevItem]:
    """The dev scenes (`build_dev`: each dev target recording over dev negatives at the
    recipe's repetitions, and the shared-data negative streams) drawn with scene seed `seed`
    (cached). The selection's scenes are seed `cfg.data.seed + 1`; other seeds are fresh
    draws of the same recordings (rule 5 scores on them). `dev_bank`: the decoded dev split,
    when the caller has it already."""
    import pickle

    params = FeatureParams()
    key = _dev_key(cfg, data_dir, params, "dev-scenes-1", seed, *([frames_key] if frames is not None else []))
    path = cache_dir / f"scenes-{key}.pkl"
    if path.is_file():
        with path.open("rb") as fh:
            return pickle.load(fh)
    dev_bank = dev_bank or D.ClipBank(D.select(D.read_clips(data_dir), "dev", cfg.data.licences))
    items = D.build_dev(dev_bank, seed=seed, params=params, reps=cfg.eval.dev_reps, frames=frames)
    _write_pickle_atomically(path, items)
    return items


def live_dev_set(
    cfg: TrainConfig, data_dir: Path, negatives_dir: Path | None, cache_dir: Path,
    frames: D.FramesOf | None = None, frames_key: str | None = None,
) -> tuple[list[D.DevItem], dict[str, Any]]:
    """Dev scenes from the shared data's dev split plus every dev negative stream (cached).
    With `frames` (and `frames_key`, naming it in the cache) the same scenes carry that
    function's rows instead of log-mel frames (a reference scorer's scores). The scenes come
    first: `info["scene_items"]` of them (`dev_scene_draw`), then the quiet rooms and the
    Debian dev negatives, which every draw of scenes shares."""
    import pickle

    from models.negatives import NegativePool

    params = FeatureParams()
    key = _dev_key(
        cfg, data_dir, params,
        "live-dev-4",  # 4: info["scene_items"]; 3: dev scenes record their beds (DevItem.bed)
        str(negatives_dir.resolve()) if negatives_dir else None,
        *([frames_key] if frames is not None else []),
    )
    path = cache_dir / f"dev-{key}.pkl"
    if path.is_file():
        with path.open("rb") as fh:
            return pickle.load(fh)
    dev_bank = D.ClipBank(D.select(D.read_clips(data_dir), "dev", cfg.data.licences))
    dev = dev_scene_draw(cfg, data_dir, cfg.data.seed + 1, cache_dir, frames, frames_key, dev_bank)
    info: dict[str, Any] = {"dev_bank": dev_bank.summary(), "scene_items": len(dev)}
    dev = dev + quiet_room_items(params, frames=frames)
    if negatives_dir is not None:
        pool = NegativePool.load(negatives_dir, "dev", cache_dir, cfg.data.licences)
        dev += dev_negative_items(pool, params, frames=frames)
        info["dev_negatives_hours"] = round(pool.hours, 3)
        info["dev_negatives_by_kind"] = pool.hours_by_kind()
    info["dev"] = D.dev_summary(dev)
    _write_pickle_atomically(path, (dev, info))
    return dev, info


def _write_pickle_atomically(path: Path, obj: object) -> None:
    """Write a cache file under a temporary name and move it into place, so that a second
    process sharing the cache (an export beside a training run) never reads half a file."""
    import os
    import pickle

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as fh:
        pickle.dump(obj, fh)
    tmp.replace(path)


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
    hard_classes: list[str] = []
    confuser_reports: list[int] = []
    mined_paths = [Path(p) for p in args.hard_negatives or []]  # one mining run or several
    if mined_paths:
        from models.mining import load_mined

        hard, hard_classes, confuser_reports = load_mined(mined_paths, bank.negative_clips, data_dir)
    teacher, teacher_head, confuser_teacher = None, None, None
    if cfg.loss.teacher > 0:
        from models.teacher import ClipTeacher, TeacherTrack

        if not getattr(args, "teacher", None):
            raise ValueError("config: loss.teacher > 0 needs --teacher (YAMNet's yamnet.tflite)")
        if pool is None:
            raise ValueError("the teacher scores the train negatives: give --negatives")
        if cfg.net.kind != "freqconv":
            raise ValueError("loss.teacher needs net.kind: freqconv")
        teacher = TeacherTrack.for_pool(
            pool, args.teacher, cache_dir, kind=cfg.loss.teacher_kind, dims=cfg.loss.teacher_dims
        )
        if "confusers" in cfg.loss.teacher_beds:
            confuser_teacher = ClipTeacher.for_clips(bank.negatives, teacher, args.teacher, cache_dir)
        torch.manual_seed(cfg.seed + 1)
        teacher_head = torch.nn.Conv1d(cfg.net.channels, teacher.n_classes, 1)
    distil_from = None
    if cfg.loss.distil > 0:
        from models.teacher import harken_scorer

        if not getattr(args, "distil_from", None):
            raise ValueError("config: loss.distil > 0 needs --distil-from (a harken .onnx model)")
        distil_from = harken_scorer(args.distil_from, net.receptive_field, cfg.net.lookahead_frames)
    distil_classes = None
    if cfg.loss.distil_classes is not None:
        distil_classes = _class_indices(cfg.loss.distil_classes, "loss.distil_classes")
    head_rows = None
    if cfg.opt.train_head_rows is not None:
        head_rows = _class_indices(cfg.opt.train_head_rows, "opt.train_head_rows")
        if not head_rows:
            raise ValueError("config: opt.train_head_rows is empty (name a class, or leave it out to train everything)")
        if not args.init:
            raise ValueError("config: opt.train_head_rows needs --init (the network whose other rows are held)")
    maker = LiveSceneMaker(
        bank, pool, cfg.data, cfg.live, cfg.opt.crop_frames, net.receptive_field,
        cfg.net.lookahead_frames, params, hard, confuser_reports, teacher, hard_classes, confuser_teacher,
        cfg.loss.teacher_beds, cfg.loss.teacher_confuser_weight,
    )
    info = {
        "train": bank.summary(),
        "train_negatives_hours": round(pool.hours, 3) if pool else 0.0,
        "train_negatives_by_kind": pool.hours_by_kind() if pool else {},
        **dev_info,
        "licences": cfg.data.licences,
        "sources": sorted({f"{c.source} | {c.licence}" for c in clips if c.split in ("train", "dev")}),
        "hard_negative_windows": len(hard),
        "hard_negative_files": [p.name for p in mined_paths],
        "hard_confuser_clips": sum(1 for r in confuser_reports if r > 0),
        "teacher_classes": teacher.n_classes if teacher is not None else 0,
        "teacher_beds": cfg.loss.teacher_beds if teacher is not None else [],
        "distilled_from": Path(args.distil_from).name if distil_from is not None else "",
    }
    print(f"data ready in {time.monotonic() - t0:.0f}s: dev {info['dev']}")
    def scene_sample() -> np.ndarray:
        """Log-mel of 48 training scenes, (48, frames, n_mels), the same for a given seed."""
        rng = np.random.default_rng(cfg.seed)
        return np.stack([maker.make(rng).features for _ in range(48)])

    init_state = None
    grow = bool(getattr(args, "init_grow", False))
    if grow and not args.init:
        raise ValueError("--init-grow needs --init (the weights the network grows from)")
    if args.init and getattr(net, "pcen_frames", 0):
        raise ValueError(
            "net.pcen_frames: a network with the energy-normalisation plane is trained from scratch (no --init)"
        )
    if args.init and args.init.suffix == ".onnx":
        from models.unfold import state_from_onnx

        # The batch norms are unfolded around the statistics of training scenes (models/unfold.py).
        member = getattr(args, "init_member", None)
        init_state = state_from_onnx(net, args.init, torch.from_numpy(scene_sample()), member, grow)
    elif args.init:
        from models.unfold import grown_state, state_with_floor_plane

        saved = torch.load(args.init, map_location="cpu", weights_only=False)
        # best.pt keeps the network under "state"; a run's resumable last.pt under "net".
        # best-state.pt (the best network while a run goes on) is the state dict itself.
        # A recipe with the background-floor plane takes a network without it (plane at zero).
        init_state = state_with_floor_plane(net, saved.get("net", saved.get("state", saved)))
        if grow:
            init_state = grown_state(net, init_state, torch.from_numpy(scene_sample()))
    else:
        # Normalisation statistics (inside the graph) from a sample of training scenes.
        scenes = scene_sample()
        sample = scenes.reshape(-1, net.n_mels)
        net.feature_mean.copy_(torch.from_numpy(sample.mean(axis=0)))
        net.feature_std.copy_(torch.from_numpy(sample.std(axis=0)).clamp_min(1e-3))
        if getattr(net, "pcen_frames", 0):
            net.set_pcen_statistics(torch.from_numpy(scenes))

    # Fresh draws of the dev scenes the tuned figure is scored on too (eval.select_draws).
    select_draws = [(seed, dev_scene_draw(cfg, data_dir, seed, cache_dir)) for seed in cfg.eval.select_draws]

    def evaluate_net(model: torch.nn.Module) -> tuple[float, dict[str, Any]]:
        scores = dev_scores(model, dev, cfg.net.lookahead_frames)  # type: ignore[arg-type]
        m = evaluate(scores, dev, cfg.decision)
        draws = [
            (seed, dev_scores(model, items, cfg.net.lookahead_frames), items)  # type: ignore[arg-type]
            for seed, items in select_draws
        ]
        selection, made_of = recipe_selection(scores, dev, cfg, draws, dev_info["scene_items"])
        return selection, {
            "default_f1": {c: v["f1"] for c, v in m["per_class"].items()},
            "default_fa_per_hour": m["fa_per_hour"],
            **made_of,
        }

    summary = train_live(
        net,
        EventAwareLoss(cfg.loss, CLASSES),
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
        stop_at_step=getattr(args, "stop_at_step", None),
        workers=cfg.opt.workers,
        init_state=init_state,
        config_dict=cfg.to_dict(),
        teacher_head=teacher_head,
        teacher_weight=cfg.loss.teacher,
        teacher_kind=cfg.loss.teacher_kind,
        distil_from=distil_from,
        distil_weight=cfg.loss.distil,
        teacher_head_fit_batches=cfg.loss.teacher_head_fit_batches,
        distil_classes=distil_classes,
        distil_positive=cfg.loss.distil_positive,
        head_rows=head_rows,
        select_average=cfg.eval.select_average,
    )
    scores = dev_scores(net, dev, cfg.net.lookahead_frames)
    metrics_default = evaluate(scores, dev, cfg.decision)
    tuned = tune_for_recipe(scores, dev, cfg)
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


def procedural_alarm_items(
    pool: Any, params: FeatureParams, n: int = 36, seed: int = 4242, ebrs_db: Sequence[float] = (-3.0, 3.0, 9.0),
    frames: D.FramesOf | None = None,
) -> list[D.DevItem]:
    """Dev scenes with procedural alarms (T3, T4/CO, 520 Hz T3, building sounders) in dev
    negatives: dev holds only 3 real alarm recordings, so the card reports these on a
    line of their own. Never used for selection or tuning."""
    from models import synth
    from models.data import _active_rms, simulated_rirs, sounder
    from service.audio.features import LogMel

    rng = np.random.default_rng(seed)
    frames = frames or LogMel(params).frames
    rirs = simulated_rirs(8, seed)
    patterns = ("t3", "t4", "low", "sounder")
    items = []
    for i in range(n):
        pattern = patterns[i % len(patterns)]
        if pattern == "sounder":
            sig, spans = sounder(rng, float(rng.uniform(2.0, 6.0)))
        else:
            sig, tones = synth.alarm(pattern, 2 if pattern != "t4" else 1, rng)
            spans = [(tones[0][0], tones[-1][1])]
            sig = sig[: int(tones[-1][1] * D.SAMPLE_RATE)]
        if i % 2:
            rir = rirs[i % len(rirs)]
            sig = np.convolve(sig, rir)[: sig.shape[0] + rir.shape[0] // 4].astype(np.float32)
        pre_s = float(rng.uniform(3.0, 6.0))
        total = int((pre_s + sig.shape[0] / D.SAMPLE_RATE + 4.0) * D.SAMPLE_RATE)
        bed = pool.excerpt(total, rng)
        at = int(pre_s * D.SAMPLE_RATE)
        ebr = ebrs_db[i % len(ebrs_db)]
        gain = (_active_rms(bed[at : at + sig.shape[0]]) + 1e-5) * 10 ** (ebr / 20) / (_active_rms(sig) + 1e-9)
        bed[at : at + sig.shape[0]] += sig[: total - at] * gain
        bed = bed / (np.abs(bed).max() + 1e-9) * 10 ** (rng.uniform(-20, -3) / 20)
        truth = [("smoke_alarm", round(pre_s + spans[0][0], 3), round(pre_s + spans[-1][1], 3))]
        items.append(
            D.DevItem(f"procedural-alarm:{pattern}:{i}:ebr{ebr:+.0f}", frames(bed), truth,
                      total / D.SAMPLE_RATE, False, f"procedural-{pattern}")
        )
    return items


def quiet_room_items(
    params: FeatureParams, minutes: float = 10.0, seed: int = 777, frames: D.FramesOf | None = None
) -> list[D.DevItem]:
    """Negative-only dev streams of quiet rooms: room noise at -75..-45 dBFS, white noise,
    and both with dropouts to digital zeros. A detector that fires here fires in every
    quiet nursery at night (and did: run B of the model card)."""
    from models import synth
    from service.audio.features import LogMel

    rng = np.random.default_rng(seed)
    frames = frames or LogMel(params).frames
    items = []
    n_items = max(1, int(minutes * 60 / 30))
    for i in range(n_items):
        n = 30 * D.SAMPLE_RATE
        if i % 2:
            audio = rng.standard_normal(n).astype(np.float32)
        else:
            audio = synth.background(30.0, rng)[:n].astype(np.float32)
        audio = audio / (np.sqrt(np.mean(audio**2)) + 1e-12) * 10 ** (rng.uniform(-75, -45) / 20)
        if i % 3 == 2:
            for _ in range(3):
                a = int(rng.integers(0, n - D.SAMPLE_RATE))
                audio[a : a + int(rng.uniform(0.3, 3.0) * D.SAMPLE_RATE)] = 0.0
        items.append(D.DevItem(f"quiet-room:{i}", frames(audio.astype(np.float32)), [], 30.0, True))
    return items

