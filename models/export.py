"""Export a trained network to ONNX with its full contract in the metadata."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx
import torch

from models.net import CompactTCN, ScoresHead
from service.audio.features import FeatureParams
from service.contract import CONTRACT_KEY, ModelContract
from service.decision import DecisionParams


def export_onnx(
    net: CompactTCN,
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
    entry = model.metadata_props.add()
    entry.key, entry.value = CONTRACT_KEY, contract.to_json()
    onnx.checker.check_model(model)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    return contract
