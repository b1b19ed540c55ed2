"""The ONNX detector under its contract: streaming equals batch, mismatches are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from service.audio.features import LogMel, StreamingLogMel
from service.contract import CONTRACT_KEY, ContractError, ModelContract
from service.detector import SCORE_BLOCK_FRAMES, Detector, bundled_model_path
from tests.conftest import t3_scene


def test_bundled_model_carries_a_complete_contract(detector: Detector) -> None:
    c = detector.contract
    assert set(c.class_names) == {"baby_cry", "smoke_alarm", "glass_break"}
    assert c.features.sample_rate == 16000 and c.features.version == "logmel-v1"
    assert 0 <= c.lookahead_frames <= 10  # bounded look-ahead: at most 200 ms
    assert set(c.decision) == set(c.class_names)
    assert c.model_version
    # The file is its float32 weights plus the graph and contract: bounded by the budget of
    # 300 k parameters (2.7.1's four members hold 125 k), not by any one release's size.
    assert bundled_model_path().stat().st_size <= 4 * 300_000 + 64_000


def _streamed(detector: Detector, audio: np.ndarray, chunk: int) -> np.ndarray:
    """The detector's scores of `audio` pushed through the streaming front end `chunk` samples at a time."""
    frontend, scorer = StreamingLogMel(), detector.stream()
    parts = [scorer.push(frontend.push(audio[i : i + chunk])) for i in range(0, audio.size, chunk)]
    parts.append(scorer.flush())
    return np.concatenate(parts)


def test_the_bundled_model_is_a_joined_quadruple_and_the_lite_option_keeps_its_contract(detector: Detector) -> None:
    """models/harken.onnx (model card: S4DP + STG7 + STD9 + STL11A, 2.7.3) is four members
    joined into one network, each class taken from the members that hold it, its cries and alarms
    dated back to the first frame that touched the threshold (the card's rule 6, thirtieth round)
    and then reported earlier by the score's usual lag (rule 9, thirty-seventh round), the
    alarm's touch at a level under its on-threshold (the card's rule 7);
    models/harken-lite.onnx (S3DP, one network, a quarter of the compute) loads through the same
    contract, streams like one pass and finds a T3 alarm, so `model:` can point at it on a slow
    machine."""
    c = detector.contract
    assert c.model_name.endswith("-x4") and len(c.training["members"]) == 4
    assert c.training["member_weights"] == {
        "baby_cry": [0.0, 0.0, 0.5, 0.5], "smoke_alarm": [1.0, 0.0, 0.0, 0.0], "glass_break": [0.5, 0.5, 0.0, 0.0]}
    assert c.decision["baby_cry"].onset_touch_s > 0 and c.decision["smoke_alarm"].onset_touch_s > 0
    # The advance stays inside the collar: an event dated at its label is still on time.
    assert 0 < c.decision["baby_cry"].onset_advance_s < 0.5 and c.decision["glass_break"].onset_advance_s == 0
    alarm = c.decision["smoke_alarm"]
    assert alarm.onset_touch_threshold < alarm.on_threshold and c.decision["baby_cry"].onset_touch_threshold == 1.0
    assert c.training["parameters"] <= 300_000 and c.training["macs_per_frame"] * 50 <= 15_000_000
    lite = Detector.load(bundled_model_path().with_name("harken-lite.onnx"))
    assert "members" not in lite.contract.training
    assert lite.contract.training["macs_per_frame"] * 4 <= c.training["macs_per_frame"]
    assert (lite.contract.class_names, lite.contract.features, lite.contract.lookahead_frames) == (
        c.class_names, c.features, c.lookahead_frames)
    audio = t3_scene(seconds=6.0, alarm_at_s=1.0)
    batch = lite.scores(LogMel().frames(audio))
    np.testing.assert_allclose(_streamed(lite, audio, 1023), batch, atol=1e-4)
    assert batch[:, lite.class_names.index("smoke_alarm")].max() > 0.5


def test_a_long_signal_scored_in_blocks_equals_one_network_call(detector: Detector) -> None:
    """Detector.raw_scores cuts a long signal into blocks of SCORE_BLOCK_FRAMES outputs
    (for speed); every output is the number one call over the whole signal gives, at the
    block edges too, and a signal just over one block gets its last output."""
    rf = detector.contract.receptive_field_frames
    rng = np.random.default_rng(5)
    for outputs in (SCORE_BLOCK_FRAMES, SCORE_BLOCK_FRAMES + 1, 2 * SCORE_BLOCK_FRAMES + 37):
        frames = rng.normal(-6.0, 2.0, (outputs + rf, 64)).astype(np.float32)
        (whole,) = detector._session.run(None, {detector.contract.input_name: frames[None]})
        blocked = detector.raw_scores(frames)
        assert blocked.shape == (outputs, len(detector.class_names))
        np.testing.assert_allclose(blocked, whole[0], rtol=0, atol=1e-6)  # equal here; kernels may round


@pytest.mark.parametrize("chunk", [1, 160, 1023, 16000])
def test_streaming_scores_equal_one_batch_pass(detector: Detector, chunk: int) -> None:
    audio = t3_scene(seconds=6.0, alarm_at_s=1.0)
    batch = detector.scores(LogMel().frames(audio))
    streamed = _streamed(detector, audio, chunk)
    assert streamed.shape == batch.shape
    np.testing.assert_allclose(streamed, batch, atol=1e-4)
    assert batch[:, detector.class_names.index("smoke_alarm")].max() > 0.5


def _rewrite_contract(tmp_path: Path, change: dict[str, object] | None, drop: bool = False) -> Path:
    model = onnx.load(str(bundled_model_path()))
    entry = next(p for p in model.metadata_props if p.key == CONTRACT_KEY)
    if drop:
        model.metadata_props.remove(entry)
    else:
        data = json.loads(entry.value)
        for key, value in (change or {}).items():
            target = data
            *parents, leaf = key.split(".")
            for parent in parents:
                target = target[parent]
            target[leaf] = value
        entry.value = json.dumps(data)
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"features.version": "logmel-v0"}, "trained on features 'logmel-v0'"),
        ({"features.sample_rate": 8000}, "expects 8000 Hz"),
        ({"schema": 99}, "schema 99 is not supported"),
        ({"class_names": ["baby_cry", "smoke_alarm"]}, "returned scores of shape"),
        ({"lookahead_frames": 99}, "lookahead_frames=99"),
        ({"decision.smoke_alarm.on_threshold": 7}, "on_threshold"),
        ({"input_name": "mel"}, "contract input 'mel'"),
    ],
)
def test_contract_mismatch_is_refused_with_a_clear_message(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(ContractError, match=message):
        Detector.load(_rewrite_contract(tmp_path, change))


def test_a_model_without_contract_or_not_onnx_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="carries no harken contract"):
        Detector.load(_rewrite_contract(tmp_path, None, drop=True))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ContractError, match="not a loadable ONNX model"):
        Detector.load(junk)
    with pytest.raises(ContractError, match=r"does not exist \(bundled models, usable by name: harken-lite\.onnx, "):
        Detector.load(tmp_path / "missing.onnx")


def test_a_bundled_model_can_be_named_by_its_file_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`model: harken-lite.onnx` works wherever harken is installed; a file of that name in
    the working directory, or a path with a folder, still means that file."""
    monkeypatch.chdir(tmp_path)
    lite = Detector.load("harken-lite.onnx")
    assert lite.path == bundled_model_path().with_name("harken-lite.onnx")
    assert (lite.contract.model_name, lite.contract.model_version) == ("harken-fcnn-small", "2.4.1")
    local = tmp_path / "harken-lite.onnx"
    local.write_bytes(b"not a model")
    with pytest.raises(ContractError, match="not a loadable ONNX model"):
        Detector.load("harken-lite.onnx")
    with pytest.raises(ContractError, match="does not exist"):
        Detector.load(tmp_path / "sub" / "harken-lite.onnx")


def test_contract_json_round_trip(detector: Detector) -> None:
    again = ModelContract.from_json(detector.contract.to_json())
    assert again == detector.contract
    with pytest.raises(ContractError, match="not valid JSON"):
        ModelContract.from_json("{")
    with pytest.raises(ContractError, match="lacks"):
        ModelContract.from_json(json.dumps({"schema": 1}))
