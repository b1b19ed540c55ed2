"""models/joined.py on members of the small shape, without training: the layout ONNX
Runtime runs blocked (NCHWc) scores as the members do, and every member reads back."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from models.joined import JOIN_TOLERANCE, Conv, FreqConvWeights, joined_graph, read_joined_member

N_MELS, CLASSES = 64, 3


def _member(rng: np.random.Generator, stats: int) -> FreqConvWeights:
    """A FreqConvTCN of harken-fcnn-small's layer shapes (8/16/24/24 channels over the mel
    bands, 40 temporal), random weights, feature statistics drawn from seed `stats`."""

    def conv(*shape: int, dilation: int = 1) -> Conv:
        fan_in = int(np.prod(shape[1:]))
        return Conv((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32),
                    (0.1 * rng.standard_normal(shape[0])).astype(np.float32), dilation)

    own = np.random.default_rng(100 + stats)
    return FreqConvWeights(
        feature_mean=own.normal(-5.0, 1.0, N_MELS).astype(np.float32),
        feature_std=own.uniform(3.0, 5.0, N_MELS).astype(np.float32),
        stem=conv(8, 1, 3, 3),
        freq_blocks=((conv(8, 1, 3, 3), conv(16, 8, 1, 1)), (conv(16, 1, 3, 3), conv(24, 16, 1, 1)),
                     (conv(24, 1, 3, 3), conv(24, 24, 1, 1))),
        project=conv(40, 24 * 4, 1),
        temporal=(conv(40, 40, 3), conv(40, 40, 3, dilation=2)),
        head=conv(CLASSES, 40, 1),
    )


def _scores(graph: onnx.GraphProto, frames: np.ndarray) -> np.ndarray:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"logmel": frames[None]})[0][0])


def test_four_joined_members_with_their_own_statistics_score_as_the_members() -> None:
    """Four members, two sharing their statistics: the front end runs in two branches of two
    members (each stem reads only its branch's planes, the pointwise layers hold both
    members in one group, zeros between them), the projection and temporal layers one
    group a member; the scores are the mean of the members' and each member reads back."""
    rng = np.random.default_rng(0)
    members = [_member(rng, stats) for stats in (0, 0, 1, 2)]
    io = (helper.make_tensor_value_info("logmel", TensorProto.FLOAT, [1, "frames", N_MELS]),
          helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, "out", CLASSES]))
    joined = joined_graph(members, *io)
    frames = (members[0].feature_mean + 3.0 * rng.standard_normal((300, N_MELS))).astype(np.float32)
    logits = [_scores(joined_graph([m], *io), frames) for m in members]  # one member alone
    expected = 1.0 / (1.0 + np.exp(-np.mean([np.log(p / (1.0 - p)) for p in logits], axis=0)))
    np.testing.assert_allclose(_scores(joined, frames), expected, atol=JOIN_TOLERANCE, rtol=0)

    convs = {n.output[0]: n for n in joined.node if n.op_type == "Conv"}
    shapes = {i.name: tuple(i.dims) for i in joined.initializer}
    group = {name: next((a.i for a in n.attribute if a.name == "group"), 1) for name, n in convs.items()}
    assert shapes["front0.stem.weight"] == (16, 1, 3, 3) and shapes["front1.stem.weight"] == (16, 2, 3, 3)
    assert [group[f"front0.freq_blocks.{b}.pointwise"] for b in range(3)] == [1, 1, 1]
    assert shapes["front0.freq_blocks.0.pointwise.weight"] == (32, 16, 1, 1)
    assert group["project"] == 4 and group["blocks.0"] == 4 and "front" in {n.output[0] for n in joined.node}

    model = helper.make_model(joined)
    biases = [m.head.bias.tolist() for m in members]
    for k, member in enumerate(members):
        back = read_joined_member(model, k, head_biases=biases)
        assert back.shapes == member.shapes
        assert np.array_equal(back.feature_mean, member.feature_mean)
        assert np.array_equal(back.feature_std, member.feature_std)
        for a, b in [(back.stem, member.stem), (back.project, member.project),
                     *[pair for got, own in zip(back.freq_blocks, member.freq_blocks, strict=True)
                       for pair in zip(got, own, strict=True)],
                     *zip(back.temporal, member.temporal, strict=True)]:
            assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)
        np.testing.assert_allclose(back.head.weight, member.head.weight, rtol=1e-6, atol=1e-7)
