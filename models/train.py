"""`harken train`, `harken export` and `harken mine`: the command line of the training rooms.

    harken train --config models/configs/live.yaml --data DIR --negatives NEG [--out runs/NAME]
                 [--max-minutes M] [--init CKPT] [--hard-negatives JSON ...] [--threads N]
    harken train --config models/configs/default.yaml --data DIR [--ablation]   (cached scenes)
    harken mine --checkpoint runs/NAME/best.pt --negatives NEG --out hard.json
    harken export --checkpoint runs/NAME/best.pt [--out models/harken.onnx] [--data DIR]

The rooms: `models.config` (recipes, network choice), `models.data` + `models.live_scenes`
+ `models.negatives` + `models.augment` (scenes), `models.net`, `models.losses`,
`models.trainer` (live loop) and `models.cached` (fixed-cache loop, ablation),
`models.tuning` (dev scoring, event metrics, decision tuning with the daemon's own
`service.decision`), `models.mining`, `models.export`. Every `eval.every_steps` steps the
network scores dev and the best checkpoint by the selection metric is kept; at the end
per-class decision parameters are tuned on dev and `harken export` writes them into
the ONNX contract.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from models.cached import ABLATIONS, ablation_table, prepare_data, train_run
from models.config import CLASSES, build_net, config_from_dict, load_config
from models.export import cmd_export
from models.trainer import save_checkpoint, train_live_command
from service.audio.features import FeatureParams
from service.cli import positive_threads

log = logging.getLogger(__name__)

__all__ = ["CLASSES", "build_net", "config_from_dict", "load_config", "main"]


def cmd_train(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    for mined in getattr(args, "hard_negatives", None) or []:  # before minutes of data preparation
        if not Path(mined).is_file():
            raise ValueError(f"--hard-negatives {mined} not found (write one with `harken mine`)")
    cfg = load_config(args.config)
    if args.steps:
        cfg = replace(cfg, opt=replace(cfg.opt, steps=args.steps))
    if args.threads is not None:
        # Two runs side by side on two cores train faster each on one thread than both on
        # two (a small network parallelises poorly); the recipe's other settings stay.
        cfg = replace(cfg, opt=replace(cfg.opt, threads=args.threads))
    if args.seed is not None:
        # Another seed of the same recipe: initial weights and every batch's scenes change,
        # the dev set (data.seed) does not, so seeds of one recipe are scored alike.
        cfg = replace(cfg, seed=args.seed)
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
        "--seed", type=int, help="override the recipe's seed (initial weights, training scenes; not dev)"
    )
    parser.add_argument(
        "--negatives", type=Path, help="built negatives folder (NEGATIVES.csv) for backgrounds and dev FA/h"
    )
    parser.add_argument("--max-minutes", type=float, help="stop cleanly after this wall time (resumable)")
    parser.add_argument(
        "--threads", type=positive_threads, help="override opt.threads (the training process's torch threads)"
    )
    parser.add_argument("--stop-at-step", type=int, help="stop at this step (at an evaluation), resumable")
    parser.add_argument(
        "--init", type=Path, help="start from these weights (fine-tuning): a checkpoint (.pt) or a model (.onnx)"
    )
    parser.add_argument("--init-member", type=int, help="with --init ENSEMBLE.onnx: start from member N")
    parser.add_argument(
        "--init-grow", action="store_true",
        help="the recipe's network has more temporal blocks than the --init weights: the extra (last) "
             "blocks start near the identity",
    )
    parser.add_argument(
        "--hard-negatives", type=Path, nargs="+", help="mined hard-negative windows (JSON); several runs are joined"
    )
    parser.add_argument(
        "--distil-from", type=Path, help="a harken .onnx model whose scores the network learns (loss.distil)"
    )
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
    parser.add_argument("--negatives", type=Path, help="built negatives folder (live recipes: dev FA/h)")
    parser.add_argument("--cache", type=Path, help="scene cache (default: next to the checkpoint)")


def add_mine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="best.pt of a training run")
    parser.add_argument("--negatives", type=Path, required=True, help="built negatives folder")
    parser.add_argument("--out", type=Path, required=True, help="JSON of mined windows")
    parser.add_argument("--cache", type=Path, help="negatives cache folder (default: in the negatives folder)")
    parser.add_argument("--threshold", type=float, help="mining on-threshold for every class (default 0.8x tuned)")
    parser.add_argument("--classes", nargs="+", metavar="CLASS", help="mine these classes' reports only")


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
