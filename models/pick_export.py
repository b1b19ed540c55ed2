"""Which candidate to keep, by the export's own figure on pick draws (model card,
twenty-first and twenty-second rounds).

The selection metric's class terms (`python -m models.pick_step`) rank a run's early
networks well and its last few poorly: among networks that close, what matters is what the
shipped pipeline does with each (tuned decisions, minimum durations, the rules' false-alarm
charges). So each candidate is exported in the shape it would ship in, with fresh draws of
the dev scenes scored (`harken export ... --scene-draws 31 32 33 34 35 11 12 ... 20`), and
this command reads those exports' figures: per candidate the mean of rule 4's figure over the
pick draws and over the judge draws, names the candidate best on the pick draws (the earlier
one named on a tie), and says how the pick draws and rule 4 on the selection's scenes rank
the candidates against the judge draws (Spearman's rank correlation).

    python -m models.pick_export runs/P-STE11-s4000.dev.json runs/P-STE11-s4500.dev.json ... \\
        --pick-draws 31 32 33 34 35 [--judge-draws 11 12 ... 20] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from models.config import CLASSES
from models.pick_step import spearman_or_nan


def draw_rows(report: Mapping[str, Any], source: str) -> dict[int, Mapping[str, Any]]:
    """An export report's scored draws by scene seed; a clear error where it scored none."""
    rows = report.get("shipping", {}).get("draws")
    if not rows:
        raise ValueError(f"{source}: no scored draws (export it with --scene-draws SEED ...)")
    return {int(r["seed"]): r for r in rows}


def draws_mean(rows: Mapping[int, Mapping[str, Any]], seeds: Sequence[int], source: str) -> dict[str, Any]:
    """Over the named draws: the mean of rule 4's figure and the mean F1 per class."""
    missing = [s for s in seeds if s not in rows]
    if missing:
        raise ValueError(f"{source}: draws {missing} were not scored (it has {sorted(rows)})")
    picked = [rows[s] for s in seeds]
    return {
        "score": round(sum(r["score"] for r in picked) / len(picked), 4),
        "f1": {c: round(sum(r["f1"][c] for r in picked) / len(picked), 4) for c in CLASSES},
    }


def candidate_figures(
    reports: Mapping[str, Mapping[str, Any]], pick_draws: Sequence[int], judge_draws: Sequence[int]
) -> dict[str, dict[str, Any]]:
    """Per candidate (its report's name): rule 4 on the selection's scenes, and the means
    over the pick draws and, where named, the judge draws."""
    if not pick_draws:
        raise ValueError("name at least one pick draw")
    if set(pick_draws) & set(judge_draws):
        raise ValueError(f"draws {sorted(set(pick_draws) & set(judge_draws))} are both pick and judge draws")
    out = {}
    for name, report in reports.items():
        rows = draw_rows(report, name)
        out[name] = {
            "selection": round(float(report["shipping"]["score"]), 4),
            "pick": draws_mean(rows, pick_draws, name),
            **({"judge": draws_mean(rows, judge_draws, name)} if judge_draws else {}),
        }
    return out


def choose(figures: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The candidate best on the pick draws (the earlier one named on a tie), the one rule 4
    on the selection's scenes would keep, and, with judge draws, the best there, each way's
    shortfall from it, and each way's rank agreement with the judge draws."""
    if not figures:
        raise ValueError("no candidates")
    names = list(figures)
    order = {name: position for position, name in enumerate(names)}

    def best(figure_of: Any) -> str:
        return max(names, key=lambda n: (figure_of(figures[n]), -order[n]))

    out: dict[str, Any] = {
        "pick": best(lambda f: f["pick"]["score"]),
        "selection": best(lambda f: f["selection"]),
    }
    if all("judge" in f for f in figures.values()):
        judged = [figures[n]["judge"]["score"] for n in names]
        out["judge_best"] = best(lambda f: f["judge"]["score"])
        top = figures[out["judge_best"]]["judge"]["score"]
        out["short_of_judge_best"] = {
            way: round(top - figures[out[way]]["judge"]["score"], 4) for way in ("pick", "selection")
        }
        out["rank_agreement_with_judge"] = {
            "pick": round(spearman_or_nan([figures[n]["pick"]["score"] for n in names], judged), 3),
            "selection": round(spearman_or_nan([figures[n]["selection"] for n in names], judged), 3),
        }
    return out


def _table(figures: Mapping[str, Mapping[str, Any]]) -> str:
    judged = all("judge" in f for f in figures.values())
    width = max(len(n) for n in figures)
    head = f"{'candidate':<{width}}  selection  pick mean" + ("  judge mean" if judged else "") + "  cry F1 pick" + (
        " / judge" if judged else "")
    rows = []
    for name, f in figures.items():
        row = f"{name:<{width}}  {f['selection']:>9.4f}  {f['pick']['score']:>9.4f}"
        if judged:
            row += f"  {f['judge']['score']:>10.4f}"
        row += f"  {f['pick']['f1']['baby_cry']:>11.3f}" + (f" / {f['judge']['f1']['baby_cry']:.3f}" if judged else "")
        rows.append(row)
    return "\n".join([head, *rows])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.pick_export", description=__doc__.split("\n")[0])
    parser.add_argument("reports", type=Path, nargs="+",
                        help="the candidates' export reports (OUT.dev.json of harken export --scene-draws)")
    parser.add_argument("--pick-draws", type=int, nargs="+", required=True, help="scene seeds the pick is made on")
    parser.add_argument("--judge-draws", type=int, nargs="*", default=[],
                        help="scene seeds the ways of choosing are judged on (reported only)")
    parser.add_argument("--json", type=Path, help="write the figures and the choices here")
    args = parser.parse_args(argv)
    reports = {}
    for path in args.reports:
        try:
            reports[path.name.removesuffix(".dev.json")] = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            parser.error(f"{path}: cannot read an export report ({err})")
    if len(reports) != len(args.reports):
        parser.error("two reports have the same name; name each candidate's export differently")
    try:
        figures = candidate_figures(reports, args.pick_draws, args.judge_draws)
        chosen = choose(figures)
    except (ValueError, KeyError) as err:
        parser.error(f"{err}")
    print(_table(figures))
    print(f"the pick (best mean over draws {' '.join(map(str, args.pick_draws))}): {chosen['pick']}")
    print(f"rule 4 on the selection's scenes would keep: {chosen['selection']}")
    if "judge_best" in chosen:
        print(f"best over the judge draws: {chosen['judge_best']}; short of it: "
              + ", ".join(f"{way} {v:.4f}" for way, v in chosen["short_of_judge_best"].items()))
        print("ranks as the judge draws (Spearman): "
              + ", ".join(f"{way} {v:.2f}" for way, v in chosen["rank_agreement_with_judge"].items()))
    if args.json:
        args.json.write_text(json.dumps({"figures": figures, **chosen}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
