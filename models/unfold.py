"""An exported FreqConvTCN back into a trainable network (`harken train --init MODEL.onnx`).

A shipped model's checkpoint may be gone while its `.onnx` is committed; a fine-tuning
round (a mining round, say) then starts from the ONNX weights. Export folded every batch
norm into the convolution before it, so the graph holds one affine convolution where the
network has a convolution and a batch norm. Putting the folded weights into the
convolution and an identity into the norm reproduces the network in evaluation, but not
in training: there a batch norm divides by the batch's own statistics, and an identity
norm whose running statistics are 0 and 1 would rescale every layer at the first step.

So each norm is unfolded around the statistics of what reaches it on real input: running
mean mu and variance var measured on a sample, scale sqrt(var + eps) and shift mu. In
evaluation that is still the identity (the scores are the ONNX model's); in training,
batches like the sample are normalised to nearly what they were, so fine-tuning starts
where the model is instead of from a disturbed copy of it.

A network can also grow while it is fine-tuned (`harken train --init ... --init-grow`):
a recipe with more temporal blocks than the weights it starts from (one more dilation, a
longer memory) takes the weights for the blocks they have, and its extra blocks, last in
the stack, start near the identity (`start_near_identity`), so the grown network first
scores almost as the one it grew from and learns what the extra context is worth.

A network can also gain the background-floor plane (`net.floor_frames`, models/net.py
`over_floor`) while it is fine-tuned: the recipe asks for the plane, the weights have none,
and the stem's weights for the plane start at zero (`add_floor_plane`). The plain plane is
cropped to the floor's start, so the network scores exactly as the one it came from (from
frame `floor_shrink` on) and learns what each band's height over its floor is worth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from models.joined import Conv, FreqConvWeights, joined_members, read_freqconv, read_joined_member
from models.net import FreqConvTCN

#: Scale of a new block's batch norm. Small, so the grown network scores almost as the one
#: it grew from; not zero, because the block's ReLU has no gradient at exactly 0 and a
#: block that outputs 0 everywhere would never learn.
NEW_BLOCK_SCALE = 0.01


def read_member(
    path: Path,
    member: int | None = None,
    others: Sequence[Path] = (),
    member_weights: np.ndarray | None = None,
    head_biases: Sequence[Sequence[float]] | None = None,
) -> FreqConvWeights:
    """The FreqConvTCN weights of an exported model: the model itself, or member `member`
    of an ensemble: side by side (`harken export --ensemble` with members of mixed shapes,
    or files written before members were joined), or joined into one network, where the
    other members' own models (`others`, in member order) give back the head bias the join
    summed (or `head_biases`, each member's, as a join's contract records them since the
    tenth round), and `member_weights` (members, classes) are the join's per-class weights."""
    model = onnx.load(str(path))
    if member is not None and model.graph.name == "harken-joined":  # models/joined.py
        indices = [k for k in range(joined_members(model)) if k != member]
        recorded = head_biases is not None and not others
        if not recorded and len(others) != len(indices):
            raise ValueError(
                f"{path} is a joined network of {len(indices) + 1} members: member {member}'s head bias needs "
                f"the other {len(indices)} member(s)' own models, in member order (given {len(others)})"
            )
        try:
            if recorded:
                return read_joined_member(model, member, member_weights, head_biases=head_biases)
            return read_joined_member(
                model, member, member_weights, {k: read_member(p) for k, p in zip(indices, others, strict=True)}
            )
        except (ValueError, KeyError) as err:
            raise ValueError(f"{path}: member {member}: {err}") from err
    prefix = "" if member is None else f"member{member}/"
    if member is not None and not any(n.output[0].startswith(prefix) for n in model.graph.node):
        raise ValueError(f"{path}: no member {member} (side-by-side members are named member0/, member1/, ...)")
    try:
        return read_freqconv(model, prefix)
    except (ValueError, KeyError) as err:
        hint = " (an ensemble: pick one network with --init-member)" if member is None else ""
        if model.graph.name == "harken-joined":  # models/joined.py
            hint = (" (its members are joined into one network; start from a member's own model, or write one "
                    "with `harken export --member N --other-members ...`)")
        raise ValueError(f"{path}: cannot read one FreqConvTCN from it{hint}: {err}") from err


def _pairs(
    net: FreqConvTCN, weights: FreqConvWeights, grow: bool = False
) -> list[tuple[str, nn.Module, nn.Module | None, Conv]]:
    """(name, convolution, the batch norm folded into it, exported weights) in graph order;
    with `grow`, the network may have more temporal blocks than the weights (the extra
    ones are not in the list)."""
    # A recipe with the background-floor plane takes a stem without it (the plane at zero).
    stem = replace(weights.stem, weight=add_floor_plane(net, torch.from_numpy(weights.stem.weight)).numpy())
    pairs: list[tuple[str, nn.Module, nn.Module | None, Conv]] = [("stem", net.stem, net.stem_norm, stem)]
    fewer_ok = grow and len(weights.temporal) < len(net.blocks)
    if len(weights.freq_blocks) != len(net.freq_blocks) or (len(weights.temporal) != len(net.blocks) and not fewer_ok):
        raise ValueError(
            f"the model has {len(weights.freq_blocks)} frequency and {len(weights.temporal)} temporal blocks, "
            f"the recipe's network {len(net.freq_blocks)} and {len(net.blocks)}"
        )
    for i, (block, (depthwise, pointwise)) in enumerate(zip(net.freq_blocks, weights.freq_blocks, strict=True)):
        pairs.append((f"freq_blocks.{i}.depthwise", block.depthwise, None, depthwise))
        pairs.append((f"freq_blocks.{i}.pointwise", block.pointwise, block.norm, pointwise))
    pairs.append(("project", net.project, net.project_norm, weights.project))
    for i, (block, conv) in enumerate(zip(net.blocks[: len(weights.temporal)], weights.temporal, strict=True)):
        pairs.append((f"blocks.{i}.conv", block.conv, block.norm, conv))
    pairs.append(("head", net.head, None, weights.head))
    return pairs


def _norm_inputs(net: nn.Module, norms: list[nn.Module], sample: torch.Tensor) -> dict[nn.Module, torch.Tensor]:
    """What reaches each of `norms` when `net` scores `sample` in evaluation, (channels, everything else)."""
    seen: dict[nn.Module, torch.Tensor] = {}

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        seen[module] = inputs[0].transpose(0, 1).reshape(inputs[0].shape[1], -1)

    hooks = [norm.register_forward_pre_hook(record) for norm in norms]
    was_training = net.training
    net.eval()
    try:
        net(sample)
    finally:
        for hook in hooks:
            hook.remove()
        net.train(was_training)
    return seen


@torch.no_grad()
def unfold_into(net: FreqConvTCN, weights: FreqConvWeights, sample: torch.Tensor, grow: bool = False) -> None:
    """Load exported `weights` into `net` (same shape) with every batch norm unfolded around
    the statistics of `sample` (log-mel, (B, T, n_mels)): `net.eval()` then scores exactly
    as the exported model, and training batches like `sample` pass the norms nearly unchanged.
    With `grow`, `net` may have more temporal blocks than `weights`: the extra ones start
    near the identity (`start_near_identity`)."""
    if weights.feature_mean.shape != tuple(net.feature_mean.shape):
        raise ValueError(f"the model reads {weights.feature_mean.shape[0]} mel bands, the recipe {net.n_mels}")
    pairs = _pairs(net, weights, grow)
    for name, conv, _, exported in pairs:
        if tuple(conv.weight.shape) != exported.weight.shape or conv.dilation[-1] != exported.dilation:
            raise ValueError(
                f"layer {name}: the model has weights {exported.weight.shape} (dilation {exported.dilation}), "
                f"the recipe's network {tuple(conv.weight.shape)} (dilation {conv.dilation[-1]}): use the "
                "recipe the model was trained with"
            )
        conv.weight.copy_(torch.from_numpy(exported.weight))
        conv.bias.copy_(torch.from_numpy(exported.bias))
    net.feature_mean.copy_(torch.from_numpy(weights.feature_mean))
    net.feature_std.copy_(torch.from_numpy(weights.feature_std))
    norms = [norm for _, _, norm, _ in pairs if isinstance(norm, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:  # the identity first, so what reaches each norm is the exported network's
        norm.running_mean.zero_()
        norm.running_var.fill_(1.0)
        norm.weight.fill_(float(np.sqrt(1.0 + norm.eps)))
        norm.bias.zero_()
    seen = _norm_inputs(net, norms, sample)
    for norm in norms:
        x = seen[norm]
        mean, var = x.mean(dim=1), x.var(dim=1, unbiased=False)
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(var)
        norm.weight.copy_(torch.sqrt(var + norm.eps))
        norm.bias.copy_(mean)
    if len(weights.temporal) < len(net.blocks):
        start_near_identity(net, len(weights.temporal), sample)


def add_floor_plane(net: FreqConvTCN, stem_weight: torch.Tensor) -> torch.Tensor:
    """`stem_weight` as `net`'s stem takes it: the weights of a network without the
    background-floor plane given a zero plane when `net` reads one (so it first scores as
    the network they came from), anything else unchanged."""
    planes = net.stem.in_channels
    if stem_weight.ndim != 4 or stem_weight.shape[1] != 1 or planes == 1:
        return stem_weight
    zeros = torch.zeros((stem_weight.shape[0], planes - 1, *stem_weight.shape[2:]), dtype=stem_weight.dtype)
    return torch.cat([stem_weight, zeros], dim=1)


def state_with_floor_plane(net: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A saved network's `state` as `net` loads it (`harken train --init RUN/best.pt`): its
    stem given the zero floor plane when `net` reads one and the state has none."""
    if not isinstance(net, FreqConvTCN) or "stem.weight" not in state:
        return state
    return {**state, "stem.weight": add_floor_plane(net, state["stem.weight"])}


def _check_growth(net: FreqConvTCN, first_new: int) -> None:
    """Growing adds at least one block after the old ones and keeps at least one old one."""
    if not 0 < first_new < len(net.blocks):
        raise ValueError(f"--init-grow: the weights have {first_new} temporal blocks, the recipe's network "
                         f"{len(net.blocks)}; growing needs fewer (and at least one)")


@torch.no_grad()
def start_near_identity(net: FreqConvTCN, first_new: int, sample: torch.Tensor) -> None:
    """Temporal blocks `first_new`.. of `net` start near the identity: their batch norms
    scale by NEW_BLOCK_SCALE around the statistics of `sample`, so each block adds a
    hundredth of a normalised signal to its residual path, in training as in evaluation."""
    _check_growth(net, first_new)
    norms = [block.norm for block in net.blocks[first_new:]]
    for norm in norms:
        norm.running_mean.zero_()
        norm.running_var.fill_(1.0)
        norm.weight.fill_(NEW_BLOCK_SCALE)
        norm.bias.zero_()
    seen = _norm_inputs(net, norms, sample)
    for norm in norms:
        norm.running_mean.copy_(seen[norm].mean(dim=1))
        norm.running_var.copy_(seen[norm].var(dim=1, unbiased=False))


def grown_state(net: FreqConvTCN, state: dict[str, torch.Tensor], sample: torch.Tensor) -> dict[str, torch.Tensor]:
    """`net`'s state with a checkpoint's `state` (of fewer temporal blocks) loaded and the
    extra blocks started near the identity (`harken train --init RUN/best.pt --init-grow`)."""
    if not isinstance(net, FreqConvTCN):
        raise ValueError("--init-grow needs a recipe with net.kind: freqconv")
    result = net.load_state_dict(state, strict=False)
    have = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
    first_new = max(have) + 1 if have else 0
    _check_growth(net, first_new)
    stray = [k for k in result.missing_keys if not (k.startswith("blocks.") and int(k.split(".")[1]) >= first_new)]
    if stray or result.unexpected_keys:
        raise ValueError(f"--init-grow: the checkpoint does not fit the recipe's network "
                         f"(missing {stray[:4]}, unexpected {result.unexpected_keys[:4]})")
    start_near_identity(net, first_new, sample)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def state_from_onnx(
    net: FreqConvTCN, path: Path, sample: torch.Tensor, member: int | None = None, grow: bool = False
) -> dict[str, torch.Tensor]:
    """`net`'s state after `unfold_into` with the weights of the exported model at `path`."""
    if not isinstance(net, FreqConvTCN):
        raise ValueError("--init MODEL.onnx needs a recipe with net.kind: freqconv")
    unfold_into(net, read_member(path, member), sample, grow)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}
