"""ONNX Runtime adapter: log-mel frames -> per-frame class scores, under the model's contract.

The network takes (1, frames, n_mels) and returns (1, frames - receptive_field, classes)
with no internal padding. Output frame j belongs to input frame j + context. Streams are
padded with the features of digital silence: `context` frames before the first frame and
`lookahead` frames after the last, so streaming in any chunk size equals one batch pass.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from service.audio.features import LogMel
from service.contract import CONTRACT_KEY, ContractError, ModelContract

log = logging.getLogger(__name__)

BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "models" / "harken.onnx"


def bundled_model_path() -> Path:
    """The model shipped with harken."""
    return BUNDLED_MODEL


class Detector:
    """A loaded model and its contract. Not thread-safe; one per inference thread."""

    def __init__(self, session: object, contract: ModelContract, path: Path) -> None:
        self._session = session
        self.contract = contract
        self.path = path
        self.silence_frame = LogMel(contract.features).silence_frame

    @classmethod
    def load(cls, path: str | Path | None = None, threads: int = 1) -> Detector:
        """Open a model file; raises ContractError with a clear message when unusable."""
        import onnxruntime as ort  # imported here so that `harken --help` stays fast

        model_path = Path(path) if path is not None else bundled_model_path()
        if not model_path.is_file():
            raise ContractError(f"model file {model_path} does not exist")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise ContractError(f"{model_path}: not a loadable ONNX model ({exc})") from exc
        metadata = session.get_modelmeta().custom_metadata_map
        if CONTRACT_KEY not in metadata:
            raise ContractError(
                f"{model_path}: the model carries no harken contract (metadata key "
                f"{CONTRACT_KEY!r}); export it with `harken export`"
            )
        contract = ModelContract.from_json(metadata[CONTRACT_KEY], origin=str(model_path))
        detector = cls(session, contract, model_path)
        detector._check_io()
        return detector

    def _check_io(self) -> None:
        c = self.contract
        inputs = {i.name: i for i in self._session.get_inputs()}  # type: ignore[attr-defined]
        outputs = {o.name for o in self._session.get_outputs()}  # type: ignore[attr-defined]
        if c.input_name not in inputs:
            raise ContractError(
                f"{self.path}: contract input {c.input_name!r} not in model inputs {list(inputs)}"
            )
        if c.output_name not in outputs:
            raise ContractError(
                f"{self.path}: contract output {c.output_name!r} not in model outputs {sorted(outputs)}"
            )
        probe = np.tile(self.silence_frame, (c.receptive_field_frames + 1, 1))
        try:
            out = self.raw_scores(probe)
        except Exception as exc:
            raise ContractError(
                f"{self.path}: model does not accept ({c.receptive_field_frames + 1}, "
                f"{c.features.n_mels}) log-mel frames as its contract says ({exc})"
            ) from exc
        if out.shape != (1, len(c.class_names)):
            raise ContractError(
                f"{self.path}: model returned scores of shape {out.shape} for one frame, "
                f"contract promises (1, {len(c.class_names)})"
            )

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.contract.class_names

    def raw_scores(self, frames: np.ndarray) -> np.ndarray:
        """Network output for already padded frames: (T, n_mels) -> (T - receptive_field, C)."""
        batch = np.ascontiguousarray(frames, dtype=np.float32)[None]
        (scores,) = self._session.run(  # type: ignore[attr-defined]
            [self.contract.output_name], {self.contract.input_name: batch}
        )
        return np.asarray(scores[0], dtype=np.float32)

    def scores(self, frames: np.ndarray) -> np.ndarray:
        """Scores of a whole signal's frames in one pass: (T, n_mels) -> (T, C)."""
        c = self.contract
        padded = np.concatenate(
            [
                np.tile(self.silence_frame, (c.context_frames, 1)),
                frames,
                np.tile(self.silence_frame, (c.lookahead_frames, 1)),
            ]
        )
        if frames.shape[0] == 0:
            return np.zeros((0, len(c.class_names)), dtype=np.float32)
        return self.raw_scores(padded)

    def stream(self) -> StreamingScorer:
        return StreamingScorer(self)


class StreamingScorer:
    """Scores over a stream of feature frames; output lags input by the model's look-ahead."""

    def __init__(self, detector: Detector) -> None:
        self._detector = detector
        c = detector.contract
        self._history = np.tile(detector.silence_frame, (c.context_frames, 1))
        self._receptive_field = c.receptive_field_frames

    def push(self, frames: np.ndarray) -> np.ndarray:
        """Feed frames (T, n_mels); return scores (k, C) of every frame now complete."""
        buffer = np.concatenate([self._history, frames]) if frames.shape[0] else self._history
        if buffer.shape[0] <= self._receptive_field:
            self._history = buffer
            return np.zeros((0, len(self._detector.class_names)), dtype=np.float32)
        scores = self._detector.raw_scores(buffer)
        self._history = buffer[buffer.shape[0] - self._receptive_field :]
        return scores

    def flush(self) -> np.ndarray:
        """End of stream: score the frames still waiting for their look-ahead."""
        c = self._detector.contract
        return self.push(np.tile(self._detector.silence_frame, (c.lookahead_frames, 1)))
