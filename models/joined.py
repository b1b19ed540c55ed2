"""Several exported FreqConvTCN networks joined into one ONNX graph that runs them together.

An ensemble of harken models (`harken export --ensemble`) is the mean of their logits.
Run side by side, each member's ~30 small convolutions are separate ONNX Runtime calls,
each with its own overhead and each on a few channels. Joined, the members become one
network whose layers hold every member's channels: the stems share the normalised input,
the depthwise layers simply concatenate, every other convolution is a grouped one (a
group per member, or two members with zeros between them, so no member reads another's
channels), and the head averages the members' logits by itself (its weights are the
members' heads side by side, divided by the count). The arithmetic is the members' own;
only its order of summation differs.

The time axis stays the last one and every convolution is 2-D, so ONNX Runtime's blocked
(NCHWc) kernels can run it: the members' projection from (channels x mel bands) to
temporal channels is a convolution over all the remaining bands, not a reshape. A grouped
convolution runs blocked only when each group's input and output channels fill whole
blocks (`NCHWC_BLOCK`: 16 channels with AVX-512; a convolution of one group needs only its
input channels to); otherwise it runs unblocked, and its input and output are reordered
between the layouts, a copy of the whole map each. A member of the small shape has 8-24
channels a frequency layer, so:
- the pointwise layers put two members in one group where that fills the blocks
  (`_members_per_group`; zeros between the two: twice their multiply-adds, less than the
  reorders around every depthwise layer they spare);
- the members' statistics are normalised as planes, one per distinct statistics, and the
  stems are one convolution over all the planes (zeros where a member reads another's
  plane), not a grouped one of one input channel a group (unblocked, then reordered);
- members with statistics of their own run their frequency layers in branches of as few
  members as fill the blocks (`_branch_size`), so that a branch's stem reads only its own
  planes; the branches join before the projection.
Measured on AVX-512, one thread, 10 minutes of features in blocks of 2 000 frames: four
joined members (three statistics) in 0.77 of the time one group a member took (0.198 s ->
0.152 s), a pair with statistics of its own in 0.86; three members sharing their statistics
(harken.onnx) as before: 24 channels fill no block, and a layer of three members to a
group (3-4x the multiply-adds) costs more than the reorders it spares.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

#: Largest score difference between the joined graph and the members run side by side
#: that still counts as the same network (float summation order differs).
JOIN_TOLERANCE = 1e-4
#: Channels per block of ONNX Runtime's blocked (NCHWc) convolution kernels on AVX-512 (and
#: Arm64 builds with NEON NCHWc kernels); 8 on AVX2, where a member of the small shape fills
#: the blocks alone and the two-member groups would only add multiply-adds (not measured).
NCHWC_BLOCK = 16
#: Most members a pointwise layer puts in one group to fill NCHWc blocks: k members to a
#: group cost k times the multiply-adds (4 measured slower than one group a member).
MAX_MEMBERS_PER_GROUP = 2


@dataclass(frozen=True)
class Conv:
    weight: np.ndarray
    bias: np.ndarray
    dilation: int = 1


@dataclass(frozen=True)
class FreqConvWeights:
    """One exported FreqConvTCN (models/net.py), batch norms already folded into its convolutions."""

    feature_mean: np.ndarray  # (n_mels,)
    feature_std: np.ndarray  # (n_mels,)
    stem: Conv  # (c0, 1, 3, 3), stride 2 over mel bands
    freq_blocks: tuple[tuple[Conv, Conv], ...]  # (depthwise (c, 1, 3, 3), pointwise (c', c, 1, 1))
    project: Conv  # (channels, c_last * bands, 1)
    temporal: tuple[Conv, ...]  # (channels, channels, kernel), each with its dilation
    head: Conv  # (classes, channels, 1)

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        convs = [self.stem, *(c for block in self.freq_blocks for c in block), self.project, *self.temporal, self.head]
        return tuple((*c.weight.shape, c.dilation) for c in convs)


def read_freqconv(model: onnx.ModelProto, prefix: str = "") -> FreqConvWeights:
    """The weights of an exported FreqConvTCN, read from its convolutions in graph order
    (those whose outputs start with `prefix`: one member of a side-by-side ensemble)."""
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:  # small tensors may be exported as Constant nodes
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)

    def conv(node: onnx.NodeProto) -> Conv:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = values[node.input[1]]
        # A convolution without a bias (the energy normalisation's smoother) adds zeros.
        bias = values[node.input[2]] if len(node.input) > 2 else np.zeros(weight.shape[0], dtype=np.float32)
        return Conv(weight.astype(np.float32), bias.astype(np.float32), int(attrs.get("dilations", [1])[-1]))

    convs = [conv(n) for n in model.graph.node if n.op_type == "Conv" and n.output[0].startswith(prefix)]
    stats = {
        key: [v for name, v in values.items() if name.startswith(prefix) and name.endswith(key)]
        for key in ("feature_mean", "feature_std")
    }
    two_d = [c for c in convs if c.weight.ndim == 4]
    if len(stats["feature_mean"]) != 1 or len(stats["feature_std"]) != 1 or len(two_d) % 2 != 1:
        raise ValueError("not an exported FreqConvTCN (stem, depthwise-separable blocks, temporal convolutions)")
    if two_d[0].weight.shape[1] != 1:  # the stem reads more planes (models/net.py over_floor, pcen)
        raise ValueError(
            "a FreqConvTCN with an extra input plane (a background-floor plane, net.floor_frames, "
            "or energy normalisation, net.pcen_frames) is not read back here"
        )
    n_blocks = (len(two_d) - 1) // 2
    one_d = convs[len(two_d) :]
    if len(one_d) < 2 or any(c.weight.ndim != 3 for c in one_d):
        raise ValueError("not an exported FreqConvTCN (no temporal convolutions after the 2-D front end)")
    return FreqConvWeights(
        feature_mean=stats["feature_mean"][0].astype(np.float32),
        feature_std=stats["feature_std"][0].astype(np.float32),
        stem=two_d[0],
        freq_blocks=tuple((two_d[1 + 2 * i], two_d[2 + 2 * i]) for i in range(n_blocks)),
        project=one_d[0],
        temporal=tuple(one_d[1:-1]),
        head=one_d[-1],
    )


def _stacked(
    convs: Sequence[Conv], as_2d: Callable[[np.ndarray], np.ndarray] = lambda w: w
) -> tuple[np.ndarray, np.ndarray]:
    """The members' layer as one grouped convolution: weights (reshaped by `as_2d`) stacked
    along output channels, and their biases."""
    return np.concatenate([as_2d(c.weight) for c in convs]), np.concatenate([c.bias for c in convs])


def _members_per_group(convs: Sequence[Conv]) -> int:
    """How many members share one group of the members' pointwise layer: the fewest (that
    divide the count) whose input and output channels fill whole NCHWc blocks, so that ONNX
    Runtime runs it blocked between the blocked depthwise layers; 1 when none up to
    `MAX_MEMBERS_PER_GROUP` do."""
    out_channels, in_channels = convs[0].weight.shape[:2]
    for k in range(1, MAX_MEMBERS_PER_GROUP + 1):
        if len(convs) % k == 0 and (k * out_channels) % NCHWC_BLOCK == 0 and (k * in_channels) % NCHWC_BLOCK == 0:
            return k
    return 1


def _grouped(convs: Sequence[Conv], per_group: int) -> tuple[np.ndarray, np.ndarray]:
    """The members' layer as one convolution of len(convs) / per_group groups: each group's
    weights are its members' side by side, zero where a member would read another's channels."""
    if per_group == 1:
        return _stacked(convs)
    rows, cols = convs[0].weight.shape[:2]
    weight = np.zeros((len(convs) * rows, per_group * cols, *convs[0].weight.shape[2:]), np.float32)
    for i, c in enumerate(convs):
        at = i % per_group
        weight[i * rows : (i + 1) * rows, at * cols : (at + 1) * cols] = c.weight
    return weight, np.concatenate([c.bias for c in convs])


def _planes(members: Sequence[FreqConvWeights]) -> tuple[list[FreqConvWeights], list[int]]:
    """The members' distinct feature statistics (members trained on the same data share
    theirs), as the members that first hold them, and each member's index among them."""
    planes: list[FreqConvWeights] = []
    plane_of = []
    for m in members:
        same = [p for p, o in enumerate(planes)
                if np.array_equal(o.feature_mean, m.feature_mean) and np.array_equal(o.feature_std, m.feature_std)]
        plane_of.append(same[0] if same else len(planes))
        if not same:
            planes.append(m)
    return planes, plane_of


def _branch_size(members: Sequence[FreqConvWeights]) -> int:
    """Members per branch of the frequency front end. Members with statistics of their own
    read them as planes of one stem convolution, which reads every plane for every output
    channel: in branches of the fewest members (dividing the count) whose channels fill
    whole NCHWc blocks at every layer, a branch's stem reads only its members' planes (and
    each branch's maps are smaller, closer to the cache). One branch when the members share
    their statistics or no such branch size exists."""
    n, first = len(members), members[0]
    widths = [first.stem.weight.shape[0], *(pointwise.weight.shape[0] for _, pointwise in first.freq_blocks)]
    if len(_planes(members)[0]) > 1:
        for size in range(1, n):
            if n % size == 0 and all(size * w % NCHWC_BLOCK == 0 for w in widths):
                return size
    return n


class _Graph:
    """Nodes and initialisers of the graph being built."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def tensor(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def conv(self, x: str, name: str, weight: np.ndarray, bias: np.ndarray, relu: bool, **attrs: object) -> str:
        out = self.node("Conv", [x, self.tensor(f"{name}.weight", weight), self.tensor(f"{name}.bias", bias)],
                        name, kernel_shape=list(weight.shape[2:]), **attrs)
        return self.node("Relu", [out], f"{name}.relu") if relu else out


def _front_end(g: _Graph, image: str, members: Sequence[FreqConvWeights], prefix: str) -> str:
    """The members' frequency front end, (B, 1, F, T) -> (B, channels, bands, T): their
    statistics' planes, (B, planes, F, T) in one broadcast, the stems as one convolution over
    all the planes (each member's rows zero but on its own plane: one group, so ONNX Runtime
    runs it blocked straight from the planes), then the depthwise-separable blocks."""
    first = members[0]
    planes, plane_of = _planes(members)
    mean = g.tensor(f"{prefix}feature_mean", np.stack([p.feature_mean for p in planes])[:, :, None])  # (planes, F, 1)
    std = g.tensor(f"{prefix}feature_std", np.stack([p.feature_std for p in planes])[:, :, None])
    normalised = g.node("Div", [g.node("Sub", [image, mean], f"{prefix}centred"), std], f"{prefix}normalised")
    freq = {"strides": [2, 1], "pads": [1, 0, 1, 0]}
    stem_weight, stem_bias = _stacked([m.stem for m in members])
    rows = first.stem.weight.shape[0]
    stem = np.zeros((len(members) * rows, len(planes), *stem_weight.shape[2:]), np.float32)
    for i, p in enumerate(plane_of):
        stem[i * rows : (i + 1) * rows, p] = stem_weight[i * rows : (i + 1) * rows, 0]
    h = g.conv(normalised, f"{prefix}stem", stem, stem_bias, relu=True, **freq)
    for b in range(len(first.freq_blocks)):
        depthwise = _stacked([m.freq_blocks[b][0] for m in members])
        h = g.conv(h, f"{prefix}freq_blocks.{b}.depthwise", *depthwise, relu=False, group=depthwise[0].shape[0],
                   **freq)
        pointwise = [m.freq_blocks[b][1] for m in members]
        per_group = _members_per_group(pointwise)
        h = g.conv(h, f"{prefix}freq_blocks.{b}.pointwise", *_grouped(pointwise, per_group), relu=True,
                   group=len(members) // per_group)
    return h


def joined_graph(
    members: Sequence[FreqConvWeights],
    input_info: onnx.ValueInfoProto,
    output_info: onnx.ValueInfoProto,
    member_weights: np.ndarray | None = None,
) -> onnx.GraphProto:
    """One graph computing sigmoid(mean of the members' logits): (B, T, n_mels) -> (B, T', classes).
    `member_weights` (members, classes), each column summing to 1, weighs each member's logit
    per class instead of the plain mean (say one class taken from one member alone)."""
    first = members[0]
    if any(m.shapes != first.shapes for m in members):
        raise ValueError("the members' layers differ in shape or dilation: they cannot be joined")
    n = len(members)
    g = _Graph()
    mel_major = g.node("Transpose", [input_info.name], "mel_major", perm=[0, 2, 1])
    image = g.node("Unsqueeze", [mel_major, g.tensor("axis_1", np.array([1], np.int64))], "image")  # (B, 1, F, T)
    size = _branch_size(members)
    if size == n:
        h = _front_end(g, image, members, "")
    else:  # each branch's output fills whole blocks: joined without a reorder
        h = g.node("Concat", [_front_end(g, image, members[i : i + size], f"front{i // size}.")
                              for i in range(0, n, size)], "front", axis=1)
    # (B, C, bands, T) -> (B, channels, 1, T): the flattening projection as a convolution
    # spanning all bands (its weight's input axis is channels-major, bands-minor).
    c_last = first.freq_blocks[-1][1].weight.shape[0] if first.freq_blocks else first.stem.weight.shape[0]
    project = _stacked([m.project for m in members], lambda w: w.reshape(w.shape[0], c_last, -1, 1))
    h = g.conv(h, "project", *project, relu=True, group=n)
    time_axis = g.tensor("axis_3", np.array([3], np.int64))
    to_end = g.tensor("to_end", np.array([np.iinfo(np.int64).max], np.int64))
    for t, layer in enumerate(first.temporal):
        temporal = _stacked([m.temporal[t] for m in members], lambda w: w[:, :, None, :])
        out = g.conv(h, f"blocks.{t}", *temporal, relu=True, group=n, dilations=[1, layer.dilation])
        shrink = (layer.weight.shape[-1] - 1) * layer.dilation
        residual = g.node("Slice", [h, g.tensor(f"blocks.{t}.shrink", np.array([shrink], np.int64)), to_end,
                                    time_axis], f"blocks.{t}.residual")
        h = g.node("Add", [out, residual], f"blocks.{t}.out")
    # The (weighted) mean of the members' heads is one head over all members' channels:
    # member i's rows of class c scaled by its weight for c.
    weights = np.full((n, first.head.weight.shape[0]), 1.0 / n) if member_weights is None else member_weights
    head = np.concatenate(
        [m.head.weight[:, :, None, :] * weights[i][:, None, None, None] for i, m in enumerate(members)], axis=1
    ).astype(np.float32)
    bias = np.sum([m.head.bias * weights[i] for i, m in enumerate(members)], axis=0).astype(np.float32)
    logits = g.conv(h, "head", head, bias, relu=False)
    squeezed = g.node("Squeeze", [logits, g.tensor("axis_2", np.array([2], np.int64))], "head.frames")  # (B, C, T')
    time_major = g.node("Transpose", [squeezed], "logits", perm=[0, 2, 1])
    g.node("Sigmoid", [time_major], output_info.name)
    return helper.make_graph(g.nodes, "harken-joined", [input_info], [output_info], g.initializers)


def joined_members(model: onnx.ModelProto) -> int:
    """How many members a joined graph (`joined_graph`) holds: the groups of its projection."""
    for node in model.graph.node:
        if node.op_type == "Conv" and node.output[0] == "project":
            return int(next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1))
    raise ValueError("not a joined harken network (no grouped projection named 'project')")


def read_joined_member(
    model: onnx.ModelProto,
    member: int,
    member_weights: np.ndarray | None = None,
    others: Mapping[int, FreqConvWeights] | None = None,
    head_biases: Sequence[Sequence[float]] | None = None,
) -> FreqConvWeights:
    """Member `member` of a joined graph as a network of its own: `joined_graph` read backwards.

    Every layer keeps each member's channels apart, so its weights and biases are slices,
    and the head's columns are the member's rows scaled by its weight per class. The head's
    bias alone is a sum over members (sum of weight x bias): the member's own bias needs
    every other member's (`others`, by member index; each is checked against its slice, so
    a wrong file is named rather than silently used), or the members' head biases as the
    contract of a join since the tenth round records them (`head_biases`, checked against
    the sum). `member_weights` (members, classes) as the join was built with; None for the
    plain mean."""
    n = joined_members(model)
    if not 0 <= member < n:
        raise ValueError(f"no member {member}: the joined network has members 0..{n - 1}")
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    dilations = {
        node.output[0]: int(helper.get_attribute_value(a)[-1])
        for node in model.graph.node if node.op_type == "Conv" for a in node.attribute if a.name == "dilations"
    }
    groups = {
        node.output[0]: int(helper.get_attribute_value(a))
        for node in model.graph.node if node.op_type == "Conv" for a in node.attribute if a.name == "group"
    }

    # The frequency front end may run in branches of members (`_branch_size`), each with
    # its own layers (`front{j}.stem`, ...); one branch keeps the plain names.
    branches = sum(1 for name in values if name.startswith("front") and name.endswith(".stem.weight")) or 1
    size = n // branches

    def front(k: int) -> tuple[str, int]:
        """The prefix of member k's front-end layers and its index among their members."""
        return ("" if branches == 1 else f"front{k // size}."), k % size

    def part(name: str, k: int, shape: Callable[[np.ndarray], np.ndarray] = lambda w: w, among: int = n) -> Conv:
        # Member k of the `among` members of the layer: its rows; of their columns its own,
        # where a group holds several members side by side (`_grouped`).
        weight, bias = values[f"{name}.weight"], values[f"{name}.bias"]
        rows, per_group = weight.shape[0] // among, max(1, among // groups.get(name, 1))
        cols = weight.shape[1] // per_group
        at = k % per_group
        return Conv(shape(weight[k * rows : (k + 1) * rows, at * cols : (at + 1) * cols]).astype(np.float32),
                    bias[k * rows : (k + 1) * rows].astype(np.float32), dilations.get(name, 1))

    def stem_and_stats(k: int) -> tuple[Conv, np.ndarray, np.ndarray]:
        """Member k's stem and statistics. A join with its statistics stacked (`feature_mean`
        (planes, F, 1), one plane per distinct statistics of its branch) has one stem
        convolution over all the planes, the member's rows zero but on its own plane; earlier
        joins one plane per member (`member{k}.feature_mean`) or one for all, and a stem
        group per plane."""
        prefix, at = front(k)
        weight, bias = values[f"{prefix}stem.weight"], values[f"{prefix}stem.bias"]
        rows = weight.shape[0] // size
        mine, own_bias = weight[at * rows : (at + 1) * rows], bias[at * rows : (at + 1) * rows].astype(np.float32)
        if f"{prefix}feature_mean" not in values:
            stats = k if f"member{k}.feature_mean" in values else 0  # one normalisation when the members share it
            return (Conv(mine.astype(np.float32), own_bias),
                    values[f"member{stats}.feature_mean"], values[f"member{stats}.feature_std"])
        read = np.flatnonzero(np.abs(mine).sum(axis=(0, 2, 3)))
        if len(read) > 1:
            raise ValueError(f"member {k}'s stem reads {len(read)} normalised planes: not a joined harken network")
        plane = int(read[0]) if len(read) else 0  # a stem of zeros reads none: any plane scores alike
        return (Conv(mine[:, plane : plane + 1].astype(np.float32), own_bias),
                values[f"{prefix}feature_mean"][plane, :, 0], values[f"{prefix}feature_std"][plane, :, 0])

    n_freq = sum(1 for name in values if name.startswith(f"{front(0)[0]}freq_blocks.")
                 and name.endswith(".depthwise.weight"))
    n_temporal = sum(1 for name in values if name.startswith("blocks.") and name.endswith(".weight"))
    head_weight, head_bias = values["head.weight"], values["head.bias"]  # (classes, n*ch, 1, 1), (classes,)
    classes, channels = head_weight.shape[0], head_weight.shape[1] // n
    weights = np.full((n, classes), 1.0 / n) if member_weights is None else np.asarray(member_weights, np.float64)
    if weights.shape != (n, classes):
        raise ValueError(f"member weights {weights.shape} for a network of {n} members and {classes} classes")

    def member_of(k: int, bias: np.ndarray) -> FreqConvWeights:
        if (weights[k] <= 0).any():
            raise ValueError(f"member {k} has weight 0 for a class: its head rows are not in the joined network")
        stem, mean, std = stem_and_stats(k)
        prefix, at = front(k)
        return FreqConvWeights(
            feature_mean=mean.astype(np.float32),
            feature_std=std.astype(np.float32),
            stem=stem,
            freq_blocks=tuple(
                (part(f"{prefix}freq_blocks.{b}.depthwise", at, among=size),
                 part(f"{prefix}freq_blocks.{b}.pointwise", at, among=size)) for b in range(n_freq)
            ),
            project=part("project", k, lambda w: w.reshape(w.shape[0], -1, 1)),
            temporal=tuple(part(f"blocks.{t}", k, lambda w: w[:, :, 0, :]) for t in range(n_temporal)),
            head=Conv((head_weight[:, k * channels : (k + 1) * channels, 0, :] / weights[k][:, None, None])
                      .astype(np.float32), bias.astype(np.float32)),
        )

    if head_biases is not None:
        biases = np.asarray(head_biases, np.float64)
        if biases.shape != (n, classes) or not np.allclose((weights * biases).sum(axis=0), head_bias, atol=1e-5):
            raise ValueError("the head biases its contract records do not add up to the joined head's")
        return member_of(member, biases[member])
    others = dict(others or {})
    missing = sorted(set(range(n)) - {member} - set(others))
    if missing:
        raise ValueError(
            f"a joined network keeps only the weighted sum of its members' head biases: member {member}'s "
            f"needs the other members' own models too (missing: member {', '.join(map(str, missing))})"
        )
    for k, weights_k in others.items():
        own = member_of(k, weights_k.head.bias)
        if own.shapes != weights_k.shapes or not all(
            np.allclose(a.weight, b.weight, atol=1e-6)
            for a, b in [(own.stem, weights_k.stem), (own.project, weights_k.project), (own.head, weights_k.head),
                         *zip(own.temporal, weights_k.temporal, strict=True)]
        ):
            raise ValueError(f"the model given as member {k} is not the joined network's member {k}")
    rest = sum(weights[k] * others[k].head.bias for k in others if k != member)
    return member_of(member, (head_bias - rest) / weights[member])
