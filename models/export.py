"""Export a trained network to ONNX with its full contract in the metadata."""

from __future__ import annotations

import argparse
import io
import json
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from models.config import CLASSES, TrainConfig, build_net, config_from_dict, load_config
from models.data import DevItem, FramesOf
from models.net import CompactTCN, FreqConvTCN, ScoresHead
from models.trainer import average_states
from service.audio.features import FeatureParams
from service.contract import CONTRACT_KEY, ModelContract
from service.decision import DecisionParams


def export_onnx(
    net: CompactTCN | FreqConvTCN,
    out_path: str | Path,
    class_names: tuple[str, ...],
    lookahead_frames: int,
    decision: Mapping[str, DecisionParams],
    model_name: str,
    model_version: str,
    training: Mapping[str, Any] | None = None,
    features: FeatureParams | None = None,
) -> ModelContract:
    """Write `net` as ONNX (dynamic time axis) carrying its contract; return the contract."""
    contract = ModelContract(
        model_name=model_name,
        model_version=model_version,
        class_names=tuple(class_names),
        features=features or FeatureParams(),
        receptive_field_frames=net.receptive_field,
        lookahead_frames=lookahead_frames,
        decision=dict(decision),
        training=dict(training or {}),
    )
    contract.verify(str(out_path))
    head = ScoresHead(net).eval()
    example = torch.zeros(1, net.receptive_field + 50, net.n_mels)
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            head,
            (example,),
            buffer,
            input_names=[contract.input_name],
            output_names=[contract.output_name],
            dynamic_axes={contract.input_name: {1: "frames"}, contract.output_name: {1: "out_frames"}},
            opset_version=17,
            dynamo=False,
        )
    model = onnx.load_from_string(buffer.getvalue())
    model.producer_name = "harken"
    model.doc_string = f"harken {model_name} {model_version}: log-mel -> {', '.join(class_names)} scores"
    write_contract(model, contract)
    onnx.checker.check_model(model)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    return contract


def tune_on_dev(
    score: Callable[[np.ndarray], np.ndarray], cfg: TrainConfig, args: argparse.Namespace,
    frames: FramesOf | None = None, frames_key: str | None = None,
) -> tuple[dict[str, DecisionParams], dict[str, Any]]:
    """Decisions tuned on dev by this code's rules for a scorer (log-mel frames -> scores),
    with the dev figures and, for live recipes with negatives, the procedural-alarm line.
    The scenes cache of the training run is reused when --cache points at it. With
    `frames` (audio -> rows, named `frames_key` in the cache) the same scenes carry those
    rows instead of log-mel frames and `score` takes them (a reference scorer)."""
    from models.cached import prepare_data
    from models.tuning import (
        SCENE_DRAW_SEEDS,
        cross_validated_score,
        evaluate,
        event_metrics,
        recall_by_ebr,
        retune_onset_dating,
        run_decisions,
        scene_draws_score,
        shipping_score,
        tune_for_recipe,
        tuning_scenes,
    )

    cache = Path(args.cache or Path(args.checkpoint).parent / "cache")
    draw_seeds = getattr(args, "scene_draws", None)
    if draw_seeds is not None and not draw_seeds:
        draw_seeds = list(SCENE_DRAW_SEEDS)
    tune_seeds = list(getattr(args, "tune_draws", None) or [])
    onset_seeds = list(getattr(args, "tune_onset_draws", None) or [])
    if draw_seeds is not None and set(draw_seeds) & {*tune_seeds, *onset_seeds, cfg.data.seed + 1}:
        raise ValueError(f"--scene-draws {draw_seeds}: a scored draw cannot be one the decisions are tuned on "
                         f"(the selection's scenes are seed {cfg.data.seed + 1}; --tune-draws {tune_seeds}; "
                         f"--tune-onset-draws {onset_seeds})")
    negatives = Path(args.negatives) if getattr(args, "negatives", None) else None
    if cfg.live.enabled:
        from models.trainer import live_dev_set

        dev, info = live_dev_set(cfg, Path(args.data), negatives, cache, frames, frames_key)
    else:
        if frames is not None:
            raise ValueError(f"{args.config}: a reference scorer needs a live recipe (live.enabled)")
        if draw_seeds is not None or tune_seeds or onset_seeds:
            raise ValueError(f"{args.config}: --scene-draws, --tune-draws and --tune-onset-draws need a live "
                             "recipe (live.enabled)")
        receptive_field = build_net(cfg, FeatureParams()).receptive_field
        _, dev, _ = prepare_data(cfg, Path(args.data), cache, receptive_field, cfg.net.lookahead_frames)
    scores = [score(item.features) for item in dev]

    def drawn(seeds: Sequence[int]) -> list[tuple[int, list[np.ndarray], list[DevItem]]]:
        from models.trainer import scored_scene_draws

        return scored_scene_draws(cfg, Path(args.data), seeds, cache, score, frames, frames_key)

    def with_draws(
        base_scores: list[np.ndarray], base_items: list[DevItem], seeds: Sequence[int], shared_each: bool = False
    ) -> tuple[list[np.ndarray], list[DevItem]]:
        # More scenes for the tuning; the shared items (after the selection's scenes) counted
        # once, or once with each draw.
        if not seeds:
            return base_scores, base_items
        n = info["scene_items"]
        return tuning_scenes(base_scores, base_items, drawn(seeds), scores[n:], dev[n:], shared_each)

    shared_each = getattr(args, "tune_draws_shared", "once") == "each"
    if shared_each and not tune_seeds:
        raise ValueError("--tune-draws-shared each: give the draws with --tune-draws")
    tune_scores, tune_items = with_draws(scores, dev, tune_seeds, shared_each)
    decisions = tune_for_recipe(tune_scores, tune_items, cfg)
    if onset_seeds:
        # Onset-only parameters on more scenes: they move onsets and nothing else.
        decisions = retune_onset_dating(*with_draws(tune_scores, tune_items, onset_seeds), decisions, cfg)
    detections = run_decisions(scores, decisions)
    report: dict[str, Any] = {
        "dev_tuned": event_metrics(dev, detections),
        "tuned_decisions": {k: v.to_dict() for k, v in decisions.items()},
        "found_by_ebr": recall_by_ebr(dev, detections),
    }
    procedural = None
    if cfg.live.enabled and negatives is not None:
        from models.negatives import NegativePool
        from models.trainer import procedural_alarm_items

        # Dev holds 3 real alarm recordings: procedural alarms in dev negatives get a
        # line of their own (not used for selection or tuning).
        pool = NegativePool.load(negatives, "dev", cache, cfg.data.licences)
        proc = procedural_alarm_items(pool, FeatureParams(), frames=frames)
        procedural = ([score(item.features) for item in proc], proc)
        proc_m = evaluate(procedural[0], proc, decisions)
        report["procedural_alarms"] = {
            "scenes": len(proc), **proc_m["per_class"]["smoke_alarm"],
            "cross_trigger": proc_m["cross_trigger"]["smoke_alarm"],
        }
    report["shipping"] = shipping_score(report)
    if tune_seeds:
        report["shipping"]["tuned_on_draws"] = list(tune_seeds)
        report["shipping"]["tuned_shared"] = "each draw" if shared_each else "once"
    if onset_seeds:
        report["shipping"]["onset_tuned_on_draws"] = list(onset_seeds)
    if draw_seeds is not None:
        n = info["scene_items"]
        report["shipping"].update(scene_draws_score(drawn(draw_seeds), scores[n:], dev[n:], decisions))
    if getattr(args, "cross_validate", False):
        report["shipping"].update(
            cross_validated_score(scores, dev, lambda s, d: tune_for_recipe(s, d, cfg), procedural=procedural)
        )
    out = Path(args.out).with_suffix(".dev.json")
    out.write_text(json.dumps(report, indent=1))
    mt, ship = report["dev_tuned"], report["shipping"]
    print(f"re-tuned decisions on dev: mean F1 {mt['mean_f1']:.3f}, FA/h {mt['fa_per_hour']:.1f} (figures in {out})")
    floor = "met" if ship["alarm_floor_met"] else "NOT met: " + "; ".join(ship["alarm_floor_failed"])
    print(
        f"shipping score (rule 4: cry and glass F1 - 0.025 x FA/h of every class) {ship['score']:.3f} "
        f"(rule 3, the alarm's FA/h not charged: {ship['score_rule3']:.3f}; rule 2: {ship['score_rule2']:.3f}); "
        f"alarm floor {floor}"
    )
    found = "; ".join(
        f"{c} " + ", ".join(f"{ebr} {v['found']}/{v['events']} ({v['heard']} heard)" for ebr, v in by.items())
        for c, by in report["found_by_ebr"].items() if by
    )
    print(f"found on time by event-to-background ratio (heard: reported anywhere inside): {found}")
    if "score_draws" in ship:
        per_draw = ", ".join(f"{r['seed']}: {r['score']:.3f}" for r in ship["draws"])
        tuned_on = "the selection's scenes" + (f" and draws {tune_seeds}" if tune_seeds else "")
        if onset_seeds:
            tuned_on += f", onset dating also on draws {onset_seeds}"
        print(f"rule 5, decisions tuned on {tuned_on}, "
              f"scored on fresh draws of the dev scenes: {ship['score_draws']:.4f} (per draw {per_draw}; "
              f"range {ship['draw_range']:.3f}; real alarm events found {ship['draws_real_alarms_found']})")
        draws_failed = ship["draws_alarm_floor_failed"]
        print(f"alarm floor over the draws {'NOT met: ' + '; '.join(draws_failed) if draws_failed else 'met'}")
    if "score_cv" in ship:
        folds = ", ".join(f"{f:.3f}" for f in ship["folds"])
        print(f"cross-validated shipping score (tuned on one half of dev, scored on the other) "
              f"{ship['score_cv']:.3f} (folds {folds})")
        for k, failed in enumerate(ship["floor_folds"]):
            print(f"alarm floor on held-out half {k}: " + ("met" if not failed else "NOT met: " + "; ".join(failed)))
    return decisions, mt


def dev_figures(mt: Mapping[str, Any]) -> dict[str, Any]:
    """The dev figures a model's contract carries (`training`)."""
    return {
        "dev_mean_f1": mt["mean_f1"],
        "dev_fa_per_hour": mt["fa_per_hour"],
        "dev_f1": {c: v["f1"] for c, v in mt["per_class"].items()},
    }


def member_weight_matrix(
    class_names: Sequence[str], members: int, member_weights: Mapping[str, Sequence[float]] | None
) -> np.ndarray | None:
    """(members, classes) weights of each member's logit per class: 1/members unless
    `member_weights` names a class, whose weights (one per member, at least 0, summing to
    1) replace the mean for that class. None when every class keeps the plain mean."""
    if not member_weights:
        return None
    weights = np.full((members, len(class_names)), 1.0 / members)
    for name, given in member_weights.items():
        if name not in class_names:
            raise ValueError(f"member weights: the models have no class {name!r} (classes: {', '.join(class_names)})")
        values = np.asarray(given, dtype=np.float64)
        if values.shape != (members,):
            raise ValueError(f"member weights of {name}: {len(values)} given for {members} members (one per model)")
        if (values < 0).any() or abs(values.sum() - 1.0) > 1e-6:
            raise ValueError(f"member weights of {name}: each at least 0 and together 1, got {list(given)}")
        weights[:, list(class_names).index(name)] = values
    return weights


def family_name(model_name: str) -> str:
    """The recipe's name without what joining and taking members appended ("-x2",
    "-member0"), so a join of a pair's member with a third network is "NAME-x3", not
    "NAME-x2-member0-x3"."""
    return re.sub(r"(-x\d+|-member\d+)+$", "", model_name)


def ensemble_onnx(
    paths: Sequence[Path], member_weights: Mapping[str, Sequence[float]] | None = None
) -> tuple[onnx.ModelProto, ModelContract]:
    """Exported models read as one network: the mean of their logits, then the sigmoid. The
    models must share classes, features and look-ahead (so the ensemble streams exactly
    like each of them); a false alarm then needs them all confident on the same frames, and
    runs from different seeds or recipes are confident on different negatives. Members may
    remember different lengths of the past: the ensemble's receptive field is the longest,
    and a member with a shorter one has its first frames dropped so every member's frame j
    belongs to the same input frame. The contract is the first model's, with that receptive
    field, the members, their parameters and multiply-accumulates added up; its decisions
    are to be re-tuned for the ensemble. `member_weights` ({class: [weight per member]})
    weighs the members' logits of a class instead of the plain mean, e.g. {"smoke_alarm":
    [1, 0]} takes the alarm from the first model alone (`member_weight_matrix`)."""
    models = [onnx.load(str(p)) for p in paths]
    contracts = [contract_of(m, str(p)) for m, p in zip(models, paths, strict=True)]
    first = contracts[0]
    shape = (first.class_names, first.features, first.lookahead_frames)
    for path, c in zip(paths, contracts, strict=True):
        if (c.class_names, c.features, c.lookahead_frames) != shape:
            raise ValueError(
                f"{path}: classes, features or look-ahead differ from {paths[0]}'s (look-ahead "
                f"{c.lookahead_frames} vs {first.lookahead_frames} frames): it cannot join the ensemble"
            )
    weights = member_weight_matrix(first.class_names, len(paths), member_weights)
    first = replace(first, receptive_field_frames=max(c.receptive_field_frames for c in contracts))
    graph = _joined_or_side_by_side(paths, models, first, [c.receptive_field_frames for c in contracts], weights)
    merged = onnx.helper.make_model(graph, opset_imports=models[0].opset_import, producer_name="harken")
    merged.ir_version = models[0].ir_version
    members = [f"{c.model_name} {c.model_version}" for c in contracts]
    merged.doc_string = f"harken ensemble of {', '.join(members)}: the mean of their logits" + (
        "" if weights is None else f", weighted per class {dict(member_weights or {})}"
    )
    # What differs between members is kept per member; the weights are open only when
    # every member's are.
    own = ("command", "seed", "steps", "best_step", "train_seconds", "licences", "weights_licence", "weights")
    closed = [c.training for c in contracts if c.training.get("licences") != "open"]
    contract = replace(
        first,
        model_name=f"{family_name(first.model_name)}-x{len(paths)}",
        training={
            **{k: v for k, v in first.training.items() if k not in own},
            "ensemble": members,
            **({"member_weights": {k: [float(v) for v in w] for k, w in (member_weights or {}).items()}}
               if weights is not None else {}),
            "members": [
                {"model": m, **{k: c.training[k] for k in own if k in c.training}, **_head_bias(model)}
                for m, c, model in zip(members, contracts, models, strict=True)
            ],
            "licences": "all" if closed else "open",
            "weights_licence": (closed or [first.training])[0].get("weights_licence", ""),
            "parameters": sum(int(c.training.get("parameters", 0)) for c in contracts),
            "macs_per_frame": sum(int(c.training.get("macs_per_frame", 0)) for c in contracts),
        },
    )
    write_contract(merged, contract)
    onnx.checker.check_model(merged)
    return merged, contract


def _head_bias(model: onnx.ModelProto) -> dict[str, list[float]]:
    """{"head_bias": [...]} of a FreqConvTCN member ({} for other networks): a joined network
    keeps only the weighted sum of its members' head biases, and with these in its contract
    `harken export --member N` takes a member out of it without the others' files."""
    from models.joined import read_freqconv

    try:
        return {"head_bias": [float(b) for b in read_freqconv(model).head.bias]}
    except (ValueError, KeyError):
        return {}


def _joined_or_side_by_side(
    paths: Sequence[Path],
    models: Sequence[onnx.ModelProto],
    first: ModelContract,
    fields: Sequence[int],
    weights: np.ndarray | None = None,
) -> onnx.GraphProto:
    """Members of one FreqConvTCN shape joined into one network (models/joined.py: grouped
    convolutions, faster), checked against the members side by side on a probe; other
    members (and members of different receptive fields `fields`) side by side, one branch each."""
    from models.joined import JOIN_TOLERANCE, joined_graph, read_freqconv

    side_by_side = _side_by_side(paths, models, first, fields, weights)
    if len(set(fields)) > 1:
        return side_by_side
    try:
        members = [read_freqconv(m) for m in models]
        joined = joined_graph(members, models[0].graph.input[0], models[0].graph.output[0], weights)
    except ValueError:
        return side_by_side
    rng = np.random.default_rng(0)
    probe = rng.normal(-6.0, 3.0, (1, first.receptive_field_frames + 200, first.features.n_mels)).astype(np.float32)
    expected, found = (_run_graph(g, models[0], first, probe) for g in (side_by_side, joined))
    if not np.allclose(found, expected, atol=JOIN_TOLERANCE, rtol=0.0):
        raise ValueError(
            f"joining {', '.join(str(p) for p in paths)} changed their scores by up to "
            f"{np.abs(found - expected).max():.2g} (a harken bug: export them side by side)"
        )
    return joined


def _run_graph(
    graph: onnx.GraphProto, like: onnx.ModelProto, contract: ModelContract, frames: np.ndarray
) -> np.ndarray:
    import onnxruntime as ort

    model = onnx.helper.make_model(graph, opset_imports=like.opset_import)
    model.ir_version = like.ir_version
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run([contract.output_name], {contract.input_name: frames})[0])


def _side_by_side(
    paths: Sequence[Path],
    models: Sequence[onnx.ModelProto],
    first: ModelContract,
    fields: Sequence[int],
    weights: np.ndarray | None = None,
) -> onnx.GraphProto:
    """The members as parallel branches of one graph, their logits averaged (or weighed per
    class by `weights`, (members, classes)); a member whose
    receptive field is shorter than the ensemble's (`first`) loses its first frames, which
    belong to input frames the longest member has no output for."""
    nodes, initializers, logits = [], [], []
    for i, (path, model, field) in enumerate(zip(paths, models, fields, strict=True)):
        graph = onnx.compose.add_prefix(model, f"member{i}/").graph
        last = [n for n in graph.node if graph.output[0].name in n.output]
        if len(last) != 1 or last[0].op_type != "Sigmoid":
            raise ValueError(f"{path}: its scores do not come from a final Sigmoid (not a harken export)")
        for node in graph.node:
            if node is last[0]:
                continue
            node.input[:] = [first.input_name if name == graph.input[0].name else name for name in node.input]
            nodes.append(node)
        initializers.extend(graph.initializer)
        logit = last[0].input[0]
        if field < first.receptive_field_frames:  # (1, T - field, classes) -> (1, T - longest, classes)
            names = [f"member{i}/align/{n}" for n in ("starts", "ends", "axes")]
            big = np.iinfo(np.int64).max
            for name, value in zip(names, (first.receptive_field_frames - field, big, 1), strict=True):
                initializers.append(onnx.numpy_helper.from_array(np.array([value], dtype=np.int64), name))
            nodes.append(onnx.helper.make_node("Slice", [logit, *names], [f"member{i}/aligned_logit"]))
            logit = f"member{i}/aligned_logit"
        logits.append(logit)
    if weights is not None:  # each member's logits (1, T, classes) times its weight per class, summed
        scaled = []
        for i, logit in enumerate(logits):
            weight, weighted = f"member{i}/class_weight", f"member{i}/weighted_logit"
            initializers.append(onnx.numpy_helper.from_array(weights[i].astype(np.float32), weight))
            nodes.append(onnx.helper.make_node("Mul", [logit, weight], [weighted]))
            scaled.append(weighted)
        nodes.append(onnx.helper.make_node("Sum", scaled, ["ensemble/mean_logit"]))
    else:
        nodes.append(onnx.helper.make_node("Mean", logits, ["ensemble/mean_logit"]))
    nodes.append(onnx.helper.make_node("Sigmoid", ["ensemble/mean_logit"], [first.output_name]))
    return onnx.helper.make_graph(
        nodes, "harken-ensemble", [models[0].graph.input[0]], [models[0].graph.output[0]], initializers
    )


def write_contract(model: onnx.ModelProto, contract: ModelContract) -> None:
    """Put `contract` into the model's metadata, replacing the one it carries if any."""
    for entry in model.metadata_props:
        if entry.key == CONTRACT_KEY:
            entry.value = contract.to_json()
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = CONTRACT_KEY, contract.to_json()


def contract_of(model: onnx.ModelProto, origin: str) -> ModelContract:
    for entry in model.metadata_props:
        if entry.key == CONTRACT_KEY:
            return ModelContract.from_json(entry.value, origin)
    raise ValueError(f"{origin}: no harken contract in its metadata (not a harken export)")


def retune_onnx(args: argparse.Namespace) -> int:
    """`harken export --checkpoint MODEL.onnx --config RECIPE --data ...`: the same network,
    its decisions re-tuned on dev by this code's rules, written with the updated contract.
    A shipped model needs no training checkpoint to take up a new decision rule. With
    `--ensemble MORE.onnx ...` the models are joined first (`ensemble_onnx`)."""
    from service.detector import Detector

    cfg = load_config(args.config)
    more = [Path(p) for p in getattr(args, "ensemble", None) or []]
    weights = getattr(args, "member_weights", None)
    model = ensemble_onnx([Path(args.checkpoint), *more], weights)[0] if more else onnx.load(str(args.checkpoint))
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(args.checkpoint)
        if more:  # the detector opens files: the joined model goes through one
            source = Path(tmp) / "ensemble.onnx"
            onnx.save(model, str(source))
        detector = Detector.load(source, threads=cfg.opt.threads)
    if tuple(detector.contract.class_names) != CLASSES:
        raise ValueError(f"{args.checkpoint}: classes {detector.contract.class_names}, the recipe's are {CLASSES}")
    decisions, mt = tune_on_dev(detector.scores, cfg, args)
    contract = detector.contract
    contract = replace(
        contract,
        model_version=getattr(args, "model_version", None) or contract.model_version,
        decision=decisions,
        training={**contract.training, **dev_figures(mt), "retuned_with": str(args.config)},
    )
    contract.verify(str(args.out))
    write_contract(model, contract)
    onnx.checker.check_model(model)
    onnx.save(model, str(args.out))
    print(f"wrote {args.out}: {contract.model_name} {contract.model_version}, dev mean F1 {mt['mean_f1']:.3f}")
    return 0


def write_member(
    ensemble: Path, member: int, cfg: TrainConfig, out: Path, others: Sequence[Path] = ()
) -> ModelContract:
    """Member `member` of an ensemble (`ensemble`, side by side or joined) written as a model
    of its own, with the ensemble's contract (its decisions until they are re-tuned) under
    the member's name. `cfg` is the recipe of the member's network shape; a joined
    ensemble also needs its other members' own models (`others`, in member order)."""
    from models.unfold import read_member, unfold_into
    from service.detector import Detector

    net = build_net(cfg, FeatureParams())
    if not isinstance(net, FreqConvTCN):
        raise ValueError("--member needs a recipe with net.kind: freqconv")
    contract = Detector.load(ensemble, threads=1).contract
    members = len(contract.training.get("ensemble", [])) or 1 + len(others)
    matrix = member_weight_matrix(contract.class_names, members, contract.training.get("member_weights"))
    recorded = [m.get("head_bias") for m in contract.training.get("members", [])]
    head_biases = recorded if recorded and all(b is not None for b in recorded) else None
    weights = read_member(ensemble, member, others, matrix, head_biases)
    # Log-mel frames with the member's own feature statistics: in evaluation the unfolded
    # norms score exactly as the exported member whatever the sample (models/unfold.py).
    rng = np.random.default_rng(0)
    sample = weights.feature_mean + weights.feature_std * rng.standard_normal((8, 200, net.n_mels))
    unfold_into(net, weights, torch.from_numpy(sample.astype(np.float32)))
    net.eval()
    return export_onnx(
        net, out, contract.class_names, cfg.net.lookahead_frames, contract.decision,
        f"{contract.model_name}-member{member}", contract.model_version,
        # The member's own size, not the ensemble's totals it would otherwise inherit (2.4.0's
        # and 2.5.0's first contracts counted a member as the whole pair).
        {**contract.training, "member_of": f"{contract.model_name} {contract.model_version}", "member": member,
         "parameters": sum(p.numel() for p in net.parameters()), "macs_per_frame": net.macs_per_frame()},
    )


def cmd_export(args: argparse.Namespace) -> int:
    """`harken export`: a checkpoint (optionally re-tuned on dev) to ONNX with its contract."""
    from models.tuning import torch_scorer

    if getattr(args, "member", None) is not None:
        cfg = load_config(args.config)
        others = [Path(p) for p in getattr(args, "other_members", None) or []]
        if not getattr(args, "data", None):
            contract = write_member(Path(args.checkpoint), args.member, cfg, Path(args.out), others)
            print(f"wrote {args.out}: {contract.model_name} {contract.model_version} (decisions of the ensemble)")
            return 0
        with tempfile.TemporaryDirectory() as tmp:  # the member, then its decisions re-tuned
            member = Path(tmp) / "member.onnx"
            write_member(Path(args.checkpoint), args.member, cfg, member, others)
            return retune_onnx(argparse.Namespace(**{**vars(args), "checkpoint": member, "member": None}))
    if Path(args.checkpoint).suffix == ".onnx":
        return retune_onnx(args)
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    if "tuned" not in ckpt:
        # A run's resume file (last.pt, written while it trains) has no tuned decisions
        # or figures: the export file of a run is best.pt, written when it ends.
        raise ValueError(f"{args.checkpoint}: not an exportable checkpoint (a run's resume file, last.pt?): export "
                         "the run's best.pt, written when it ends, with --weights RUN/evals/step-N.pt for another step")
    cfg = config_from_dict({k: v for k, v in ckpt["config"].items()}, str(args.checkpoint))
    net = build_net(cfg, FeatureParams())
    weights = list(getattr(args, "weights", None) or [])  # service.cli checks that --data comes with them
    net.load_state_dict(average_states(weights) if weights else ckpt["state"])
    net.eval()
    decisions = {k: DecisionParams.from_dict(v) for k, v in ckpt["tuned"].items()}
    mt = ckpt["metrics_tuned"]
    retuned_with = {}
    if getattr(args, "data", None):
        torch.set_num_threads(cfg.opt.threads)
        # --config names the tuning code (a later round's rules); the network stays the checkpoint's.
        tuning = load_config(args.config) if getattr(args, "config", None) else cfg
        decisions, mt = tune_on_dev(torch_scorer(net, cfg.net.lookahead_frames), tuning, args)
        retuned_with = {"retuned_with": str(args.config)} if getattr(args, "config", None) else {}
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
        **({"weights": [p.name for p in weights]} if weights else {}),
        **dev_figures(mt),
        **retuned_with,
    }
    out = Path(args.out)
    export_onnx(
        net, out, CLASSES, cfg.net.lookahead_frames, decisions, cfg.name,
        getattr(args, "model_version", None) or cfg.version, training
    )
    print(
        f"wrote {out} ({out.stat().st_size} bytes): {ckpt['parameters']} parameters, "
        f"{ckpt['macs_per_frame']} MAC/frame, dev mean F1 {mt['mean_f1']:.3f}"
    )
    return 0
