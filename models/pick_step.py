"""Which of a run's networks to keep, judged on fresh draws of the dev scenes (model card,
twenty-first round).

A run keeps its network at every evaluation (`OUT/evals/step-N.pt`) and chooses one on the
selection's scenes: one draw of the dev scenes (seed `data.seed + 1`), which read
optimistic against other draws of the same recordings. This command scores every kept
network on the selection's scenes and on named draws (their scenes pooled, the quiet rooms
and dev negatives every draw shares counted once) with the selection metric's class terms
(`models.tuning.selection_terms`: best event F1 over a few on-thresholds less `eval.fa_cost`
per false alarm an hour), and names the best network per class on the pick draws. With
judge draws it also says how well each way of choosing ranks the networks as those draws
do (Spearman's rank correlation over the networks).

    python -m models.pick_step --run runs/STE10 --data ../shared/data --negatives /work/negatives \\
        --cache runs/cache --pick-draws 31 32 33 34 35 [--judge-draws 11 12 ...] [--json OUT]

The step named is exported as a member with `harken export --checkpoint RUN/best.pt
--weights RUN/evals/step-N.pt`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from models.config import CLASSES

#: Where the terms of one network on one set of scenes live: {scenes: {class: term}}.
Terms = dict[str, dict[str, float]]


def step_of(path: Path) -> int:
    """The training step of a kept network's file name (`step-500.pt` -> 500)."""
    found = re.fullmatch(r"step-(\d+)\.pt", path.name)
    if not found:
        raise ValueError(f"{path}: not a kept network (evals/step-N.pt)")
    return int(found.group(1))


def kept_networks(run: Path) -> list[Path]:
    """A run's kept networks in step order; a clear error where it has none."""
    files = sorted((run / "evals").glob("step-*.pt"), key=step_of)
    if not files:
        raise ValueError(f"{run}: no kept networks under {run / 'evals'} (a run of harken train keeps one "
                         "at every evaluation)")
    return files


def best_steps(terms_by_step: Mapping[int, Terms], scenes: str) -> dict[str, int]:
    """Per class, the step whose term on `scenes` is highest (the earlier step on a tie)."""
    steps = sorted(terms_by_step)
    return {c: max(steps, key=lambda s: (terms_by_step[s][scenes][c], -s)) for c in CLASSES}


def spearman_or_nan(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation of two equally long sequences; nan where either is the
    same throughout (no order to agree with)."""
    from scipy.stats import spearmanr

    if len(a) != len(b):
        raise ValueError(f"rank agreement of {len(a)} against {len(b)} figures")
    if len(set(a)) < 2 or len(set(b)) < 2:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def rank_agreement(terms_by_step: Mapping[int, Terms], chooser: str, judge: str) -> dict[str, float]:
    """Per class, Spearman's rank correlation over the steps between the terms on `chooser`
    scenes and on `judge` scenes (nan where either is the same for every step)."""
    steps = sorted(terms_by_step)
    return {
        c: spearman_or_nan([terms_by_step[s][chooser][c] for s in steps], [terms_by_step[s][judge][c] for s in steps])
        for c in CLASSES
    }


def network_terms(
    run: Path, data: Path, negatives: Path | None, cache: Path,
    pick_draws: Sequence[int], judge_draws: Sequence[int],
) -> tuple[dict[int, Terms], dict[str, Any]]:
    """Every kept network's class terms on the selection's scenes ("selection"), the pick
    draws ("pick") and the judge draws ("judge", where named), with the run's recipe."""
    import torch

    from models.config import build_net, config_from_dict
    from models.trainer import dev_scene_draw, live_dev_set
    from models.tuning import dev_scores, selection_terms_of_sets
    from service.audio.features import FeatureParams

    files = kept_networks(run)
    last = run / "last.pt"
    if not last.is_file():
        raise ValueError(f"{run}: no last.pt (the run's recipe is read from it)")
    cfg = config_from_dict(torch.load(last, map_location="cpu", weights_only=False)["config"], str(last))
    if not cfg.live.enabled:
        raise ValueError(f"{run}: draws of the dev scenes need a live recipe (live.enabled)")
    if set(pick_draws) & set(judge_draws):
        raise ValueError(f"draws {sorted(set(pick_draws) & set(judge_draws))} are both pick and judge draws")
    if cfg.data.seed + 1 in {*pick_draws, *judge_draws}:
        raise ValueError(f"seed {cfg.data.seed + 1} is the selection's scenes, not a fresh draw")
    dev, info = live_dev_set(cfg, data, negatives, cache)
    n = info["scene_items"]
    selection, shared = dev[:n], dev[n:]
    scenes = {"selection": selection,
              "pick": [i for s in pick_draws for i in dev_scene_draw(cfg, data, s, cache)],
              **({"judge": [i for s in judge_draws for i in dev_scene_draw(cfg, data, s, cache)]}
                 if judge_draws else {})}
    net = build_net(cfg, FeatureParams())
    out: dict[int, Terms] = {}
    for path in files:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        scored = {name: (dev_scores(net, items, cfg.net.lookahead_frames), items) for name, items in scenes.items()}
        out[step_of(path)] = selection_terms_of_sets(
            scored, dev_scores(net, shared, cfg.net.lookahead_frames), shared, cfg.decision, fa_cost=cfg.eval.fa_cost
        )
        # A dozen networks over 16 draws take a quarter of an hour on two cores: say where it is.
        print(f"{path.name}: " + ", ".join(f"{c} {t:.3f}" for c, t in out[step_of(path)]["pick"].items()),
              file=sys.stderr, flush=True)
    about = {"scene_items": {name: len(items) for name, items in scenes.items()},
             "shared_items": len(shared), "negative_hours": info.get("dev_negatives_hours", 0.0)}
    return out, about


def report(terms_by_step: Mapping[int, Terms], run_choice: int | None) -> dict[str, Any]:
    """The picks and, where judge draws were scored, how each way of choosing does on them:
    per class the step each chooses (the last step, the run's own choice, the best on the
    selection's scenes, the pick) with its judge term, and the rank agreements."""
    steps = sorted(terms_by_step)
    choices = {"last": dict.fromkeys(CLASSES, steps[-1]),
               "selection": best_steps(terms_by_step, "selection"),
               "pick": best_steps(terms_by_step, "pick")}
    if run_choice is not None:
        choices["run"] = dict.fromkeys(CLASSES, run_choice)
    out: dict[str, Any] = {"choices": choices}
    if all("judge" in t for t in terms_by_step.values()):
        out["on_judge_draws"] = {
            way: {c: round(terms_by_step[chosen[c]]["judge"][c], 4) for c in CLASSES}
            for way, chosen in choices.items()
        }
        out["rank_agreement_with_judge"] = {
            way: {c: round(v, 3) for c, v in rank_agreement(terms_by_step, way, "judge").items()}
            for way in ("selection", "pick")
        }
    return out


def _table(terms_by_step: Mapping[int, Terms]) -> str:
    scenes = list(next(iter(terms_by_step.values())))
    head = "step " + " ".join(f"{c[:5]}:{s[:4]:>4}" for c in CLASSES for s in scenes)
    rows = [f"{step:>4} " + " ".join(f"{terms_by_step[step][s][c]:>10.3f}" for c in CLASSES for s in scenes)
            for step in sorted(terms_by_step)]
    return "\n".join([head, *rows])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.pick_step", description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a harken train output folder (evals/, last.pt)")
    parser.add_argument("--data", type=Path, required=True, help="data folder (MANIFEST.csv)")
    parser.add_argument("--negatives", type=Path, help="built Debian negatives (the dev negatives are shared)")
    parser.add_argument("--cache", type=Path, help="scenes cache (default RUN/../cache)")
    parser.add_argument("--pick-draws", type=int, nargs="+", required=True, help="scene seeds the pick is made on")
    parser.add_argument("--judge-draws", type=int, nargs="*", default=[],
                        help="scene seeds the ways of choosing are judged on (reported only)")
    parser.add_argument("--json", type=Path, help="write every network's terms and the picks here")
    args = parser.parse_args(argv)
    try:
        terms, about = network_terms(args.run, args.data, args.negatives, args.cache or args.run.parent / "cache",
                                     args.pick_draws, args.judge_draws)
    except ValueError as err:
        parser.error(str(err))
    best = args.run / "best.pt"
    run_choice = None
    if best.is_file():
        import torch

        run_choice = int(torch.load(best, map_location="cpu", weights_only=False)["best_step"])
    result = report(terms, run_choice)
    print(f"scenes {about['scene_items']}, shared items {about['shared_items']} "
          f"({about['negative_hours']} h of dev negatives)")
    print(_table(terms))
    for way, chosen in result["choices"].items():
        print(f"{way:>9}: " + ", ".join(f"{c} step {s}" for c, s in chosen.items()))
    for way, on_judge in result.get("on_judge_draws", {}).items():
        print(f"{way:>9} on the judge draws: " + ", ".join(f"{c} {v:.3f}" for c, v in on_judge.items()))
    for way, agree in result.get("rank_agreement_with_judge", {}).items():
        print(f"{way:>9} ranks as the judge draws (Spearman): " + ", ".join(f"{c} {v:.2f}" for c, v in agree.items()))
    if args.json:
        args.json.write_text(json.dumps({"terms": {str(s): t for s, t in terms.items()}, **about, **result},
                                        indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
