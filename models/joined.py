"""Several exported FreqConvTCN networks joined into one ONNX graph that runs them together.

An ensemble of harken models (`harken export --ensemble`) is the mean of their logits.
Run side by side, each member's ~30 small convolutions are separate ONNX Runtime calls,
each with its own overhead and each on a few channels. Joined, the members become one
network whose layers hold every member's channels: the stems share the normalised input,
the depthwise layers simply concatenate, every other convolution is a grouped one (one
group per member, so no member reads another's channels), and the head averages the
members' logits by itself (its weights are the members' heads side by side, divided by
the count). The arithmetic is the members' own; only its order of summation differs.

The time axis stays the last one and every convolution is 2-D, so ONNX Runtime's blocked
(NCHWc) kernels run the whole network, the temporal layers included: the members'
projection from (channels x mel bands) to temporal channels is a convolution over all the
remaining bands, not a reshape.
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
        weight, bias = values[node.input[1]], values[node.input[2]]
        return Conv(weight.astype(np.float32), bias.astype(np.float32), int(attrs.get("dilations", [1])[-1]))

    convs = [conv(n) for n in model.graph.node if n.op_type == "Conv" and n.output[0].startswith(prefix)]
    stats = {
        key: [v for name, v in values.items() if name.startswith(prefix) and name.endswith(key)]
        for key in ("feature_mean", "feature_std")
    }
    two_d = [c for c in convs if c.weight.ndim == 4]
    if len(stats["feature_mean"]) != 1 or len(stats["feature_std"]) != 1 or len(two_d) % 2 != 1:
        raise ValueError("not an exported FreqConvTCN (stem, depthwise-separable blocks, temporal convolutions)")
    if two_d[0].weight.shape[1] != 1:  # the stem reads a second plane (models/net.py over_floor)
        raise ValueError("a FreqConvTCN with a background-floor plane (net.floor_frames) is not read back here")
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
    shared_stats = all(
        np.array_equal(m.feature_mean, first.feature_mean) and np.array_equal(m.feature_std, first.feature_std)
        for m in members
    )
    axis_1 = g.tensor("axis_1", np.array([1], np.int64))
    normalised = []
    for i, m in enumerate(members if not shared_stats else members[:1]):
        mean = g.tensor(f"member{i}.feature_mean", m.feature_mean)
        centred = g.node("Sub", [input_info.name, mean], f"member{i}.centred")
        scaled = g.node("Div", [centred, g.tensor(f"member{i}.feature_std", m.feature_std)], f"member{i}.normalised")
        mel_major = g.node("Transpose", [scaled], f"member{i}.mel_major", perm=[0, 2, 1])  # (B, F, T)
        normalised.append(g.node("Unsqueeze", [mel_major, axis_1], f"member{i}.image"))  # (B, 1, F, T)
    image = normalised[0] if len(normalised) == 1 else g.node("Concat", normalised, "images", axis=1)
    freq = {"strides": [2, 1], "pads": [1, 0, 1, 0]}
    h = g.conv(image, "stem", *_stacked([m.stem for m in members]), relu=True, group=len(normalised), **freq)
    for b in range(len(first.freq_blocks)):
        depthwise = _stacked([m.freq_blocks[b][0] for m in members])
        h = g.conv(h, f"freq_blocks.{b}.depthwise", *depthwise, relu=False, group=depthwise[0].shape[0], **freq)
        h = g.conv(h, f"freq_blocks.{b}.pointwise", *_stacked([m.freq_blocks[b][1] for m in members]), relu=True,
                   group=n)
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

    def part(name: str, k: int, shape: Callable[[np.ndarray], np.ndarray] = lambda w: w) -> Conv:
        weight, bias = values[f"{name}.weight"], values[f"{name}.bias"]
        rows = weight.shape[0] // n
        return Conv(shape(weight[k * rows : (k + 1) * rows]).astype(np.float32),
                    bias[k * rows : (k + 1) * rows].astype(np.float32), dilations.get(name, 1))

    n_freq = sum(1 for name in values if name.startswith("freq_blocks.") and name.endswith(".depthwise.weight"))
    n_temporal = sum(1 for name in values if name.startswith("blocks.") and name.endswith(".weight"))
    head_weight, head_bias = values["head.weight"], values["head.bias"]  # (classes, n*ch, 1, 1), (classes,)
    classes, channels = head_weight.shape[0], head_weight.shape[1] // n
    weights = np.full((n, classes), 1.0 / n) if member_weights is None else np.asarray(member_weights, np.float64)
    if weights.shape != (n, classes):
        raise ValueError(f"member weights {weights.shape} for a network of {n} members and {classes} classes")

    def member_of(k: int, bias: np.ndarray) -> FreqConvWeights:
        if (weights[k] <= 0).any():
            raise ValueError(f"member {k} has weight 0 for a class: its head rows are not in the joined network")
        stats = k if f"member{k}.feature_mean" in values else 0  # one normalisation when the members share it
        return FreqConvWeights(
            feature_mean=values[f"member{stats}.feature_mean"].astype(np.float32),
            feature_std=values[f"member{stats}.feature_std"].astype(np.float32),
            stem=part("stem", k),
            freq_blocks=tuple(
                (part(f"freq_blocks.{b}.depthwise", k), part(f"freq_blocks.{b}.pointwise", k)) for b in range(n_freq)
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
