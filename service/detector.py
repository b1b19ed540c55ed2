"""ONNX Runtime adapter: log-mel frames -> per-frame class scores, under the model's contract.

The network takes (1, frames, n_mels) and returns (1, frames - receptive_field, classes)
with no internal padding. Output frame j belongs to input frame j + context. A stream's
first frame is repeated `context` times before it and its last frame `lookahead` times
after it (`pad_stream`: the network sees a steady past and future, not an edge from
digital silence that no microphone produces: such edges looked like glass breaks at every
start and end of a stream), so streaming in any chunk size equals one batch pass.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from service.audio.features import LogMel
from service.contract import CONTRACT_KEY, ContractError, ModelContract

log = logging.getLogger(__name__)

BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "models" / "harken.onnx"

#: How several windows are scored in one model call: stacked along the batch axis (a
#: model with a dynamic batch dimension), concatenated along time (a model without
#: internal padding or time-global operations: the outputs that straddle two windows
#: are dropped), or one call per window.
BatchMode = Literal["batch", "concat", "sequential"]
#: Largest score difference between one window alone and the same window inside a batch
#: that still counts as the same result (float summation order differs a little).
BATCH_TOLERANCE = 1e-4
#: Outputs per network call when a long signal is scored (Detector.raw_scores): blocks
#: of ~40 s keep the intermediate maps in cache (measured fastest at 1 000-2 000 frames on
#: the joined pair and triple, 2 000 on one network).
SCORE_BLOCK_FRAMES = 2000


def pad_stream(frames: np.ndarray, context: int, lookahead: int) -> np.ndarray:
    """A whole stream's frames as the network scores them: the first frame repeated
    `context` times before, the last frame repeated `lookahead` times after. A stream is
    steady before it starts and after it ends: padding with digital silence instead put an
    edge at both ends that looked like a glass break at every start and end of a stream."""
    return np.concatenate(
        [np.repeat(frames[:1], context, axis=0), frames, np.repeat(frames[-1:], lookahead, axis=0)]
    )


def bundled_model_path() -> Path:
    """The model shipped with harken."""
    return BUNDLED_MODEL


def bundled_models() -> list[str]:
    """File names of the models shipped with harken (the default and its options)."""
    return sorted(p.name for p in BUNDLED_MODEL.parent.glob("*.onnx"))


def resolve_model_path(path: str | Path | None) -> Path:
    """The model file `path` names: None is the bundled default, and a bare file name that
    is not a file here but one of the bundled models (`harken-lite.onnx`) is that one, so a
    config can say `model: harken-lite.onnx` wherever harken is installed."""
    if path is None:
        return BUNDLED_MODEL
    model_path = Path(path)
    if not model_path.is_file() and model_path.parent == Path(".") and (BUNDLED_MODEL.parent / model_path).is_file():
        return BUNDLED_MODEL.parent / model_path
    return model_path


class Detector:
    """A loaded model and its contract. Not thread-safe; one per inference thread."""

    def __init__(self, session: object, contract: ModelContract, path: Path) -> None:
        self._session = session
        self.contract = contract
        self.path = path
        self.silence_frame = LogMel(contract.features).silence_frame
        self._batch_mode: BatchMode | None = None

    @classmethod
    def load(cls, path: str | Path | None = None, threads: int = 1) -> Detector:
        """Open a model file; raises ContractError with a clear message when unusable."""
        import onnxruntime as ort  # imported here so that `harken --help` stays fast

        model_path = resolve_model_path(path)
        if not model_path.is_file():
            raise ContractError(
                f"model file {model_path} does not exist (bundled models, usable by name: "
                f"{', '.join(bundled_models())})"
            )
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
        """Network output for already padded frames: (T, n_mels) -> (T - receptive_field, C).

        A long signal is scored in blocks of `SCORE_BLOCK_FRAMES` outputs, each with its
        receptive field of input: the outputs are the same numbers as one call's (every
        output sees exactly its own frames), and the network's intermediate maps of one
        block stay in the CPU's cache: 1.3-1.6 times faster for 10 minutes of audio than one
        call over all 30 000 frames (`bench/pipeline.py`)."""
        frames = np.ascontiguousarray(frames, dtype=np.float32)
        rf = self.contract.receptive_field_frames
        n_out = frames.shape[0] - rf
        if n_out <= SCORE_BLOCK_FRAMES:
            return self._run(frames)
        return np.concatenate([
            self._run(frames[start : min(n_out, start + SCORE_BLOCK_FRAMES) + rf])
            for start in range(0, n_out, SCORE_BLOCK_FRAMES)
        ])

    def _run(self, frames: np.ndarray) -> np.ndarray:
        (scores,) = self._session.run(  # type: ignore[attr-defined]
            [self.contract.output_name], {self.contract.input_name: frames[None]}
        )
        return np.asarray(scores[0], dtype=np.float32)

    @property
    def batch_mode(self) -> BatchMode:
        """The fastest way this model scores several windows at once, checked once by a probe."""
        if self._batch_mode is None:
            self._batch_mode = self._probe_batch_mode()
            log.debug("model %s: batched scoring by %s", self.path.name, self._batch_mode)
        return self._batch_mode

    @batch_mode.setter
    def batch_mode(self, mode: BatchMode) -> None:
        self._batch_mode = mode  # the streams benchmark compares the modes

    def _probe_batch_mode(self) -> BatchMode:
        # A mode is used only if it gives the scores of separate calls: a recurrent or
        # attention model would not, and then every window gets its own call.
        c = self.contract
        rng = np.random.default_rng(0)
        windows = [
            self.silence_frame
            + rng.normal(0.0, 2.0, (c.receptive_field_frames + n, c.features.n_mels))
            for n in (3, 8)
        ]
        windows = [w.astype(np.float32) for w in windows]
        expected = [self.raw_scores(w) for w in windows]
        batch_dim = self._session.get_inputs()[0].shape[0]  # type: ignore[attr-defined]
        candidates: list[BatchMode] = ["concat"] if batch_dim == 1 else ["batch", "concat"]
        for mode in candidates:
            try:
                got = self._raw_scores_by(mode, windows)
            except Exception:  # the model refuses this layout (e.g. a fixed batch of 1)
                continue
            if all(g.shape == e.shape and np.abs(g - e).max() <= BATCH_TOLERANCE
                   for g, e in zip(got, expected, strict=True)):
                return mode
        return "sequential"

    def raw_scores_many(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]:
        """`raw_scores` of several padded windows in as few model calls as the model allows."""
        if len(windows) <= 1:
            return [self.raw_scores(w) for w in windows]
        return self._raw_scores_by(self.batch_mode, windows)

    def _raw_scores_by(self, mode: BatchMode, windows: Sequence[np.ndarray]) -> list[np.ndarray]:
        rf = self.contract.receptive_field_frames
        lengths = [w.shape[0] for w in windows]
        if mode == "sequential":
            return [self.raw_scores(w) for w in windows]
        if mode == "concat":
            # (sum T, n_mels) -> (sum T - rf, C); window i owns [start_i, start_i + T_i - rf).
            out = self.raw_scores(np.concatenate(windows))
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            return [out[s : s + t - rf] for s, t in zip(starts, lengths, strict=True)]
        # "batch": pad the end with silence; padding only affects outputs that are dropped.
        longest = max(lengths)
        silence = self.silence_frame
        batch = np.stack([
            np.concatenate([w, np.tile(silence, (longest - w.shape[0], 1))]) for w in windows
        ]).astype(np.float32)  # (B, T_max, n_mels)
        (scores,) = self._session.run(  # type: ignore[attr-defined]
            [self.contract.output_name], {self.contract.input_name: batch}
        )
        return [np.asarray(scores[i, : t - rf], dtype=np.float32) for i, t in enumerate(lengths)]

    def scores(self, frames: np.ndarray) -> np.ndarray:
        """Scores of a whole signal's frames in one pass: (T, n_mels) -> (T, C)."""
        c = self.contract
        if frames.shape[0] == 0:
            return np.zeros((0, len(c.class_names)), dtype=np.float32)
        return self.raw_scores(pad_stream(frames, c.context_frames, c.lookahead_frames))

    def stream(self) -> StreamingScorer:
        return StreamingScorer(self)


class StreamingScorer:
    """Scores over a stream of feature frames; output lags input by the model's look-ahead."""

    def __init__(self, detector: Detector) -> None:
        self._detector = detector
        c = detector.contract
        #: Filled with copies of the stream's first frame once it arrives.
        self._history: np.ndarray | None = None
        self._context = c.context_frames
        self._n_mels = c.features.n_mels
        self._receptive_field = c.receptive_field_frames

    def push(self, frames: np.ndarray) -> np.ndarray:
        """Feed frames (T, n_mels); return scores (k, C) of every frame now complete."""
        return push_many([(self, frames)])[0]

    def _window(self, frames: np.ndarray) -> np.ndarray:
        """History + new frames: the window to score (no state change)."""
        if self._history is None:
            if not frames.shape[0]:
                return np.zeros((0, self._n_mels), dtype=np.float32)
            return np.concatenate([np.repeat(frames[:1], self._context, axis=0), frames])
        return np.concatenate([self._history, frames]) if frames.shape[0] else self._history

    def _advance(self, window: np.ndarray) -> None:
        if not window.shape[0]:
            return
        keep = min(window.shape[0], self._receptive_field)
        self._history = window[window.shape[0] - keep :]

    def flush(self) -> np.ndarray:
        """End of stream: score the frames still waiting for their look-ahead."""
        c = self._detector.contract
        if self._history is None:  # nothing was ever pushed: nothing to score
            return np.zeros((0, len(c.class_names)), dtype=np.float32)
        last = self._history[-1:]  # the stream's last frame: it is steady after its end
        return self.push(np.repeat(last, c.lookahead_frames, axis=0))


def push_many(items: Sequence[tuple[StreamingScorer, np.ndarray]]) -> list[np.ndarray]:
    """`StreamingScorer.push` for several streams of one detector, batched into one model call.

    Either every scorer advances or, when the model call raises, none does.
    """
    if not items:
        return []
    detector = items[0][0]._detector
    if any(scorer._detector is not detector for scorer, _ in items):
        raise ValueError("push_many: all scorers must share one detector")
    windows = [scorer._window(frames) for scorer, frames in items]
    rf = detector.contract.receptive_field_frames
    ready = [i for i, w in enumerate(windows) if w.shape[0] > rf]
    scored = detector.raw_scores_many([windows[i] for i in ready])
    results = [np.zeros((0, len(detector.class_names)), dtype=np.float32) for _ in items]
    for i, scores in zip(ready, scored, strict=True):
        results[i] = scores
    for (scorer, _), window in zip(items, windows, strict=True):
        scorer._advance(window)
    return results
