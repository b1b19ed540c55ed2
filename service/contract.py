"""The model contract: everything the daemon must know about a model, stored inside it.

The exporter writes the contract as JSON into the ONNX metadata under `CONTRACT_KEY`;
the daemon reads it back and refuses to run a model whose contract is missing, malformed
or incompatible with its own feature code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from service.audio.features import FEATURE_VERSION, FeatureParams
from service.decision import DecisionParams

CONTRACT_KEY = "harken.contract"
CONTRACT_SCHEMA = 1
#: Target classes the product knows how to present (MQTT device classes, webhooks, UI).
KNOWN_CLASSES = ("baby_cry", "smoke_alarm", "glass_break")


class ContractError(ValueError):
    """The model's contract is missing, malformed, or does not match this harken."""


@dataclass(frozen=True)
class ModelContract:
    """What a model promises: its classes, its input features, its timing and decisions."""

    model_name: str
    model_version: str
    class_names: tuple[str, ...]
    features: FeatureParams
    #: Feature frames the network consumes per output frame beyond the frame itself.
    receptive_field_frames: int
    #: Of those, how many lie in the future of the output frame (bounded look-ahead).
    lookahead_frames: int
    decision: Mapping[str, DecisionParams]
    input_name: str = "logmel"
    output_name: str = "scores"
    training: Mapping[str, Any] = field(default_factory=dict)

    @property
    def context_frames(self) -> int:
        """Past frames the network needs before an output frame."""
        return self.receptive_field_frames - self.lookahead_frames

    @property
    def lookahead_s(self) -> float:
        return self.lookahead_frames * self.features.hop_s

    def to_json(self) -> str:
        return json.dumps(
            {
                "schema": CONTRACT_SCHEMA,
                "model_name": self.model_name,
                "model_version": self.model_version,
                "class_names": list(self.class_names),
                "features": self.features.to_dict(),
                "receptive_field_frames": self.receptive_field_frames,
                "lookahead_frames": self.lookahead_frames,
                "decision": {k: v.to_dict() for k, v in self.decision.items()},
                "input_name": self.input_name,
                "output_name": self.output_name,
                "training": dict(self.training),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str, origin: str = "model") -> ModelContract:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ContractError(f"{origin}: contract metadata is not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ContractError(f"{origin}: contract metadata must be a JSON object")
        if data.get("schema") != CONTRACT_SCHEMA:
            raise ContractError(
                f"{origin}: contract schema {data.get('schema')!r} is not supported "
                f"(this harken reads schema {CONTRACT_SCHEMA})"
            )
        required = (
            "model_name", "model_version", "class_names", "features",
            "receptive_field_frames", "lookahead_frames", "decision",
        )
        missing = [key for key in required if key not in data]
        if missing:
            raise ContractError(f"{origin}: contract lacks {', '.join(missing)}")
        try:
            features = FeatureParams.from_dict(data["features"])
            decision = {
                name: DecisionParams.from_dict(values) for name, values in data["decision"].items()
            }
            contract = cls(
                model_name=str(data["model_name"]),
                model_version=str(data["model_version"]),
                class_names=tuple(str(c) for c in data["class_names"]),
                features=features,
                receptive_field_frames=int(data["receptive_field_frames"]),
                lookahead_frames=int(data["lookahead_frames"]),
                decision=decision,
                input_name=str(data.get("input_name", "logmel")),
                output_name=str(data.get("output_name", "scores")),
                training=dict(data.get("training", {})),
            )
        except (TypeError, ValueError) as exc:
            raise ContractError(f"{origin}: malformed contract: {exc}") from exc
        contract.verify(origin)
        return contract

    def verify(self, origin: str = "model") -> None:
        """Check that this harken can run the model exactly as it was trained."""
        expected = FeatureParams()
        if self.features.version != FEATURE_VERSION:
            raise ContractError(
                f"{origin}: trained on features {self.features.version!r}, "
                f"but this harken computes {FEATURE_VERSION!r}; use a model exported for this version"
            )
        if self.features.sample_rate != expected.sample_rate:
            raise ContractError(
                f"{origin}: expects {self.features.sample_rate} Hz audio, harken delivers "
                f"{expected.sample_rate} Hz"
            )
        if not self.class_names:
            raise ContractError(f"{origin}: contract names no classes")
        if len(set(self.class_names)) != len(self.class_names):
            raise ContractError(f"{origin}: duplicate class names {list(self.class_names)}")
        missing = [c for c in self.class_names if c not in self.decision]
        if missing:
            raise ContractError(f"{origin}: no decision parameters for {', '.join(missing)}")
        if not 0 <= self.lookahead_frames <= self.receptive_field_frames:
            raise ContractError(
                f"{origin}: lookahead_frames={self.lookahead_frames} must lie in "
                f"[0, receptive_field_frames={self.receptive_field_frames}]"
            )
