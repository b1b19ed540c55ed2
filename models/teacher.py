"""The teacher (issue 12 part 5): YAMNet's AudioSet scores on the train negatives,
distilled into the network through a training-only head.

YAMNet (`../shared/models/yamnet/yamnet.tflite`, Apache-2.0) scores the train negatives
pool once, 0.975 s windows every 0.48 s (a few minutes for 20 h on one core), and
the scores are cached beside the pool. Only AudioSet classes that the pool actually
contains are kept (a class whose 99.9th percentile reaches `MIN_PRESENT`). In training,
a scene whose background is a plain stretch of the negatives carries the teacher's
scores for that stretch, aligned to its output frames (with `loss.teacher_beds` naming
`confusers`, a bed laid from household confuser clips carries each clip's own rows where
the clip lies, `ClipTeacher`); a 1x1 head on the network's temporal features learns them
(binary cross-entropy, `loss.teacher` weight). The network so learns what music, speech,
engines and game sounds are from AudioSet's 521 classes, not only that they are "no
target". The head is never exported: the ONNX model and its contract do not change, and
YAMNet is never loaded at run time.

The second teacher is a harken model itself (`harken_scorer`): an ensemble that runs too
slowly for the pipeline's budget scores every training batch, and a network of one
member's size learns its scores beside the labels (`loss.distil`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.negatives import NegativePool, write_cached_array

log = logging.getLogger(__name__)

WINDOW_SAMPLES = 15600  # YAMNet's input: 0.975 s at 16 kHz
HOP_SAMPLES = 7680  # 0.48 s, YAMNet's usual framing
MIN_PRESENT = 0.1


EMBEDDING_TENSOR = "yamnet_frames/global_average_pooling2d/Mean"  # (1, 1024), see the YAMNet README


def _yamnet_interpreter(path: Path, content: bytes | None = None) -> tuple[Any, dict[str, Any]]:
    """YAMNet's LiteRT interpreter (of the file, or of `content`: the file's graph edited)
    and its input, with errors that name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"teacher model {path} not found (give yamnet.tflite)")
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("the teacher needs ai-edge-litert: pip install -e '.[train]'") from exc
    try:
        source: dict[str, Any] = {"model_path": str(path)} if content is None else {"model_content": content}
        interpreter = Interpreter(**source, num_threads=1)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:  # LiteRT's message does not name the file
        raise ValueError(f"{path}: not a TFLite model YAMNet's wrapper can load ({exc})") from None
    (inp,) = interpreter.get_input_details()
    if list(inp["shape"]) != [1, WINDOW_SAMPLES]:
        raise ValueError(f"{path}: input shape {list(inp['shape'])}, expected [1, {WINDOW_SAMPLES}] (YAMNet)")
    return interpreter, inp


def yamnet_scorer(model_path: str | Path) -> Callable[[np.ndarray], np.ndarray]:
    """A function from one 15600-sample float window to YAMNet's 521 class scores."""
    path = Path(model_path)
    interpreter, inp = _yamnet_interpreter(path)
    scores_out = [o for o in interpreter.get_output_details() if list(o["shape"]) == [1, 521]]
    if not scores_out:
        raise ValueError(f"{path}: no [1, 521] output (YAMNet's class scores)")
    return _window_reader(interpreter, inp, scores_out[0]["index"])


def _window_reader(interpreter: Any, inp: dict[str, Any], index: int) -> Callable[[np.ndarray], np.ndarray]:
    """A function from one window to the flattened tensor `index` of YAMNet's graph."""

    def read(window: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(inp["index"], window[None].astype(np.float32))
        interpreter.invoke()
        return np.array(interpreter.get_tensor(index), dtype=np.float32).reshape(-1)

    return read


def yamnet_embedder(model_path: str | Path) -> Callable[[np.ndarray], np.ndarray]:
    """A function from one 15600-sample float window to YAMNet's 1024-d embedding.

    The embedding is an inner tensor of the graph. Reading it with LiteRT's
    `experimental_preserve_all_tensors` keeps the graph off its fast kernels (35 minutes for
    the 20 h of train negatives on one core, about 14 ms a window), so the graph is edited
    instead: its first output becomes the embedding (`with_first_output`). The numbers are the
    same to the bit (checked on real windows); under a training run's load a window took
    10.3 ms against 20.8 (model card, twenty-seventh round)."""
    path = Path(model_path)
    interpreter, _ = _yamnet_interpreter(path)
    found = [t for t in interpreter.get_tensor_details() if t["name"] == EMBEDDING_TENSOR]
    if not found:
        raise ValueError(f"{path}: no tensor {EMBEDDING_TENSOR} (YAMNet's embedding)")
    edited, inp = _yamnet_interpreter(path, with_first_output(path.read_bytes(), int(found[0]["index"])))
    output = edited.get_output_details()[0]
    if output["name"] != EMBEDDING_TENSOR or list(output["shape"]) != [1, 1024]:
        raise ValueError(f"{path}: its edited graph outputs {output['name']} {list(output['shape'])}, "
                         f"not {EMBEDDING_TENSOR} [1, 1024]")
    return _window_reader(edited, inp, output["index"])


def with_first_output(model: bytes, tensor_index: int) -> bytes:
    """A TFLite model's bytes with its first subgraph's first output replaced by tensor
    `tensor_index` (one int32 overwritten in place; TFLite's schema: Model field 2 is
    `subgraphs`, SubGraph field 2 is `outputs`)."""
    import struct

    from flatbuffers.encode import Get
    from flatbuffers.number_types import UOffsetTFlags
    from flatbuffers.table import Table

    edited = bytearray(model)
    try:
        root = Table(edited, Get(UOffsetTFlags.packer_type, edited, 0))
        subgraphs = root.Offset(4 + 2 * 2)
        if not subgraphs or not root.VectorLen(subgraphs):
            raise ValueError("it has no subgraph")
        subgraph = Table(edited, root.Indirect(root.Vector(subgraphs)))
        outputs = subgraph.Offset(4 + 2 * 2)
        if not outputs or not subgraph.VectorLen(outputs):
            raise ValueError("its first subgraph has no output")
        struct.pack_into("<i", edited, subgraph.Vector(outputs), tensor_index)
    except (IndexError, struct.error) as exc:
        raise ValueError(f"not a TFLite flatbuffer ({exc})") from None
    return bytes(edited)


@dataclass(frozen=True)
class PrincipalBasis:
    """The leading principal components of some rows: their mean (D,), the components
    (D, dims) and the spread of the rows along each (dims,), so that other rows (a
    confuser clip's embeddings) land in the same standardised coordinates."""

    mean: np.ndarray
    vectors: np.ndarray
    spread: np.ndarray

    @classmethod
    def fit(cls, rows: np.ndarray, dims: int) -> PrincipalBasis:
        """Components are signed so that their largest loading is positive (the same rows
        give the same basis)."""
        x = rows.astype(np.float64)
        mean = x.mean(axis=0)
        x -= mean
        dims = min(dims, x.shape[1])
        values, vectors = np.linalg.eigh(x.T @ x / max(x.shape[0] - 1, 1))
        vectors = vectors[:, np.argsort(values)[::-1][:dims]]
        vectors *= np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(dims)])
        return cls(mean, vectors, (x @ vectors).std(axis=0))

    def project(self, rows: np.ndarray) -> np.ndarray:
        """`rows` (N, D) in the basis, each component scaled by the fitted rows' spread: (N, dims) float32."""
        projected = (rows.astype(np.float64) - self.mean) @ self.vectors
        return (projected / (self.spread + 1e-8)).astype(np.float32)

    def save(self, path: Path) -> None:
        """Written under a name of its own and moved into place whole (as `write_cached_array`)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp.npz")
        np.savez(tmp, mean=self.mean, vectors=self.vectors, spread=self.spread)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> PrincipalBasis:
        with np.load(path) as saved:
            return cls(saved["mean"], saved["vectors"], saved["spread"])


def principal_components(rows: np.ndarray, dims: int) -> np.ndarray:
    """`rows` (N, D) projected on their `dims` leading principal components, each scaled to
    unit variance: (N, dims) float32."""
    return PrincipalBasis.fit(rows, dims).project(rows)


def score_track(audio: np.ndarray, score: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Teacher rows (scores or embeddings) of audio, int16 or float in [-1, 1], one per
    HOP_SAMPLES (a clip shorter than a window gets one, zero-padded): (frames, K) float16."""
    scale = 32768.0 if np.issubdtype(audio.dtype, np.integer) else 1.0
    n = max(1, 1 + (audio.shape[0] - WINDOW_SAMPLES) // HOP_SAMPLES)
    rows = []
    for i in range(n):
        window = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
        part = np.asarray(audio[i * HOP_SAMPLES : i * HOP_SAMPLES + WINDOW_SAMPLES], dtype=np.float32)
        window[: part.shape[0]] = part / scale
        rows.append(score(window))
    return np.stack(rows).astype(np.float16)


def window_rows(samples: np.ndarray) -> np.ndarray:
    """The index of the teacher window whose centre is nearest each of `samples`, positions
    in a track that starts at sample 0 (the index may lie outside the track)."""
    return np.rint((samples - WINDOW_SAMPLES / 2) / HOP_SAMPLES).astype(np.int64)


class TeacherTrack:
    """Teacher scores over a negatives pool, and the pool samples they belong to."""

    def __init__(
        self, scores: np.ndarray, classes: list[int], basis: PrincipalBasis | None = None, key: str = ""
    ) -> None:
        self.scores = scores  # (frames, len(classes)) float16
        self.classes = classes  # AudioSet class indices kept
        self.basis = basis  # the embedding's components over the pool (kind "embedding")
        self.key = key  # names the cache entry: the pool, the teacher model and the kind

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def for_pool(
        cls,
        pool: NegativePool,
        model_path: str | Path,
        cache_dir: str | Path,
        score: Callable[[np.ndarray], np.ndarray] | None = None,
        kind: str = "scores",
        dims: int = 64,
    ) -> TeacherTrack:
        """Score `pool` with the teacher at `model_path` (or `score`, a stand-in for it), or
        read the cached rows. `kind` "scores": the classes present in the pool are kept;
        "embedding": the embedding's `dims` leading principal components over the pool,
        standardised (`classes` then numbers the components)."""
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"teacher model {path} not found (give yamnet.tflite)")
        if kind not in ("scores", "embedding"):
            raise ValueError(f"teacher kind must be 'scores' or 'embedding', got {kind!r}")
        model_key = hashlib.sha1(f"{path.name}:{path.stat().st_size}".encode()).hexdigest()[:10]
        suffix = "" if kind == "scores" else f"-embedding{dims}"
        key = f"teacher-{pool.key}-{model_key}{suffix}"
        array_file = Path(cache_dir) / f"{key}.npy"
        index_file = array_file.with_suffix(".json")
        # The embedding's basis places confuser clips in the pool's components (`ClipTeacher`);
        # an entry cached without it is built again.
        basis_file = array_file.with_name(f"{key}-basis.npz") if kind == "embedding" else None
        if array_file.is_file() and index_file.is_file() and (basis_file is None or basis_file.is_file()):
            return cls(
                np.load(array_file, mmap_mode="r"), json.loads(index_file.read_text())["classes"],
                PrincipalBasis.load(basis_file) if basis_file is not None else None, key,
            )
        basis = None
        if kind == "embedding":
            rows = score_track(pool.audio, score or yamnet_embedder(path)).astype(np.float32)
            basis = PrincipalBasis.fit(rows, dims)
            full = basis.project(rows).astype(np.float16)
            classes = list(range(full.shape[1]))
            assert basis_file is not None
            basis.save(basis_file)  # before the index, which readers look for last
        else:
            full = score_track(pool.audio, score or yamnet_scorer(path))
            present = np.quantile(full.astype(np.float32), 0.999, axis=0) >= MIN_PRESENT
            classes = [int(i) for i in np.flatnonzero(present)]
        if not classes:
            raise ValueError("the teacher found no class present in the negatives (is the pool silent?)")
        write_cached_array(
            array_file, np.ascontiguousarray(full[:, classes]), index_file,
            {"classes": classes, "frames": int(full.shape[0])},
        )
        log.info("teacher: %d frames, %d of %d classes present", full.shape[0], len(classes), full.shape[1])
        return cls(np.load(array_file, mmap_mode="r"), classes, basis, key)

    def frames(self, first_sample: int, centres: np.ndarray) -> np.ndarray:
        """Teacher rows for frames centred `centres` samples after pool sample `first_sample`
        (the window whose centre is nearest each frame's): (len(centres), n_classes) float16."""
        idx = window_rows(first_sample + centres)
        return np.asarray(self.scores[np.clip(idx, 0, self.scores.shape[0] - 1)])


class ClipTeacher:
    """Teacher rows of each household confuser clip, in the pool track's terms (its kept
    AudioSet classes, or its embedding components), so that a confuser bed laid from
    pieces of clips (`data.negative_bed`) carries the teacher as a plain stretch of the
    negatives does."""

    def __init__(self, rows: np.ndarray, starts: np.ndarray) -> None:
        self.rows = rows  # (all clips' windows, K) float16, clip after clip
        self.starts = starts  # (clips + 1,) int: clip i's rows are rows[starts[i]:starts[i + 1]]

    @property
    def n_classes(self) -> int:
        return int(self.rows.shape[1])

    @classmethod
    def for_clips(
        cls,
        clips: Sequence[np.ndarray],
        track: TeacherTrack,
        model_path: str | Path,
        cache_dir: str | Path,
        score: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> ClipTeacher:
        """Score `clips` (float audio) with the teacher at `model_path` (or `score`, a
        stand-in for it) as `track` scored its pool, or read the cached rows."""
        if not clips:
            raise ValueError("the confuser teacher needs household confuser clips in train (there are none)")
        digest = hashlib.sha1(track.key.encode())
        for clip in clips:
            digest.update(np.ascontiguousarray(clip).tobytes())
            digest.update(str(clip.shape[0]).encode())
        array_file = Path(cache_dir) / f"{track.key}-clips-{digest.hexdigest()[:12]}.npy"
        index_file = array_file.with_suffix(".json")
        if array_file.is_file() and index_file.is_file():
            return cls(np.load(array_file), np.asarray(json.loads(index_file.read_text())["starts"]))
        if track.basis is not None:
            embed = score or yamnet_embedder(model_path)
            per_clip = [track.basis.project(score_track(c, embed).astype(np.float32)) for c in clips]
        else:
            scorer = score or yamnet_scorer(model_path)
            per_clip = [score_track(c, scorer)[:, track.classes] for c in clips]
        starts = np.concatenate([[0], np.cumsum([r.shape[0] for r in per_clip])]).astype(np.int64)
        rows = np.concatenate(per_clip).astype(np.float16)
        write_cached_array(array_file, rows, index_file, {"starts": [int(x) for x in starts]})
        log.info("teacher: %d confuser clips, %d windows", len(clips), rows.shape[0])
        return cls(rows, starts)

    def frames(
        self, pieces: Sequence[tuple[int, int, int, int]], centres: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Teacher rows for frames centred at `centres` (samples of a stream laid from
        `pieces`: clip index, first sample, end sample, the clip's own sample at the first),
        and where they hold: a frame inside a piece whose clip has a window centred within
        half a hop of it. Frames in the silence between pieces, or at a clip's edge where
        the nearest window would be off the clip, hold none. Where pieces cross-fade, the
        later one counts. (len(centres), n_classes) float16 and (len(centres),) bool."""
        rows = np.zeros((centres.shape[0], self.n_classes), dtype=np.float16)
        held = np.zeros(centres.shape[0], dtype=bool)
        for pick, first, end, clip_first in pieces:
            inside = (centres >= first) & (centres < end)
            idx = window_rows(centres[inside] - first + clip_first)
            count = self.starts[pick + 1] - self.starts[pick]
            ok = (idx >= 0) & (idx < count)
            where = np.flatnonzero(inside)
            rows[where[ok]] = self.rows[self.starts[pick] + idx[ok]]
            held[where] = ok  # a later piece overrides an earlier one
        return rows, held


def fit_linear_head(
    head: Any,
    features: list[Any],
    targets: list[Any],
    masks: list[Any],
    ridge: float = 1e-3,
) -> tuple[float, float]:
    """Set a 1x1 `torch.nn.Conv1d` teacher head (C -> K) to the ridge-regression fit of the
    teacher's rows from the network's temporal features: `features` (B, C, T), `targets`
    (B, T, K) and `masks` (B, T) per batch, over the frames the masks mark. A mask's value
    is its frame's weight (`loss.teacher_confuser_weight` lightens confuser-bed frames), as
    in the training term, so the fit is weighted least squares. `ridge` is relative to the
    features' weighted mean energy (the bias is not penalised). Returns the weighted mean
    squared error per component before and after the fit."""
    import torch

    xs, ys, ws = [], [], []
    for f, t, m in zip(features, targets, masks, strict=True):
        frame_weight = m.reshape(-1).double()
        keep = frame_weight > 0
        xs.append(f.detach().transpose(1, 2).reshape(-1, f.shape[1])[keep].double())
        ys.append(t.detach().reshape(-1, t.shape[-1])[keep].double())
        ws.append(frame_weight[keep])
    x, y, w = torch.cat(xs), torch.cat(ys), torch.cat(ws)
    if x.shape[0] == 0:
        raise ValueError("no teacher frames to fit the head on (no scene had a background that carries the teacher)")
    w = w / w.mean()  # a mean weight of one: `ridge` keeps its scale

    def weighted_mse(residual: torch.Tensor) -> float:
        return float(((residual**2).mean(dim=1) * w).mean())

    with torch.no_grad():
        before = weighted_mse(head(x.T[None].float())[0].T.double() - y)
        ones = torch.ones(x.shape[0], 1, dtype=x.dtype)
        design = torch.cat([x, ones], dim=1)
        gram = design.T @ (design * w[:, None])
        penalty = ridge * float(((x**2).mean(dim=1) * w).mean()) * x.shape[0]
        gram[:-1, :-1] += penalty * torch.eye(x.shape[1], dtype=x.dtype)
        solution = torch.linalg.solve(gram, design.T @ (y * w[:, None]))  # (C + 1, K)
        head.weight.copy_(solution[:-1].T[..., None].to(head.weight.dtype))
        head.bias.copy_(solution[-1].to(head.bias.dtype))
        after = weighted_mse(design @ solution - y)
    return before, after


def harken_scorer(
    model_path: str | Path, receptive_field: int, lookahead: int
) -> Callable[[np.ndarray], np.ndarray]:
    """A function from a batch of input crops (B, T, n_mels) to a harken model's scores of
    them (B, T - receptive_field, classes), output frame for output frame with the student:
    the model must have the student's receptive field and look-ahead."""
    from service.detector import Detector

    detector = Detector.load(model_path, threads=1)
    c = detector.contract
    if (c.receptive_field_frames, c.lookahead_frames) != (receptive_field, lookahead):
        raise ValueError(
            f"{model_path}: receptive field {c.receptive_field_frames} and look-ahead "
            f"{c.lookahead_frames} frames, the network trained here has {receptive_field} and "
            f"{lookahead}: its scores would not line up with the network's frames"
        )

    def score(batch: np.ndarray) -> np.ndarray:
        return np.stack(detector.raw_scores_many(list(batch)))

    return score
