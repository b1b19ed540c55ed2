"""Hours of negative audio (the Debian negatives recipe) as one memory-mapped array per split.

`../shared/data/negatives/build.py` writes `OUT/<split>/<package>/<n>.flac` and
`OUT/NEGATIVES.csv` (speech, music, game effects, ambience; split by package). Decoding
20 h of FLAC takes about a minute, so each split is decoded once into an int16 `.npy`
under a cache folder and memory-mapped afterwards: scene workers share the pages, and a
random minutes-long background is a slice, not a file read.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000


def write_cached_array(array_file: Path, array: np.ndarray, index_file: Path, index: object) -> None:
    """A cache entry (an array and its JSON index) written under names of this build's own
    and moved into place whole: two runs building one cache at once (a training run and an
    export, or two runs started together) neither trip over nor read each other's half file.
    Readers look for both files, and the index is moved last."""
    array_file.parent.mkdir(parents=True, exist_ok=True)
    unique = uuid.uuid4().hex
    tmp = array_file.with_suffix(f".{unique}.tmp.npy")
    np.save(tmp, array)
    tmp.replace(array_file)
    tmp_index = index_file.with_suffix(f".{unique}.tmp.json")
    tmp_index.write_text(json.dumps(index))
    tmp_index.replace(index_file)


@dataclass(frozen=True)
class NegativeChunk:
    """One row of NEGATIVES.csv: where its samples live in the split's array."""

    path: str
    kind: str
    source: str
    licence: str
    start: int  # first sample in the split's array
    length: int  # samples


def read_negatives_csv(folder: str | Path) -> list[dict[str, str]]:
    """Rows of FOLDER/NEGATIVES.csv; a clear error when FOLDER is not a built negatives folder."""
    folder = Path(folder)
    table = folder / "NEGATIVES.csv"
    if not table.is_file():
        raise FileNotFoundError(
            f"{table} not found: --negatives must be the OUT folder of "
            "shared/data/negatives/build.py (it holds NEGATIVES.csv)"
        )
    with table.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    missing = {"path", "class", "split", "source", "license"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{table}: missing column(s) {', '.join(sorted(missing))}")
    return rows


class NegativePool:
    """All negative audio of one split, concatenated, as int16 (memory-mapped when cached)."""

    def __init__(self, audio: np.ndarray, chunks: list[NegativeChunk], key: str = "") -> None:
        self.audio = audio  # (n_samples,) int16
        self.chunks = chunks
        #: Names this pool's content in caches derived from it (the teacher's scores).
        self.key = key

    @classmethod
    def load(
        cls, folder: str | Path, split: str, cache_dir: str | Path | None = None, licences: str = "all"
    ) -> NegativePool:
        from models.manifest import licence_is_open

        folder = Path(folder)
        rows = [r for r in read_negatives_csv(folder) if r["split"] == split]
        if licences == "open":
            rows = [r for r in rows if licence_is_open(r["license"])]
        if not rows:
            raise ValueError(f"{folder / 'NEGATIVES.csv'}: no {split} chunks")
        key = hashlib.sha1(
            json.dumps([split, licences, [(r["path"], r.get("duration_s", "")) for r in rows]]).encode()
        ).hexdigest()[:12]
        cache = Path(cache_dir) if cache_dir else folder / ".harken-cache"
        array_file = cache / f"negatives-{split}-{key}.npy"
        index_file = array_file.with_suffix(".json")
        if array_file.is_file() and index_file.is_file():
            audio = np.load(array_file, mmap_mode="r")
            chunks = [NegativeChunk(**c) for c in json.loads(index_file.read_text())]
            return cls(audio, chunks, f"{split}-{key}")
        parts: list[np.ndarray] = []
        chunks = []
        pos = 0
        for row in rows:
            data, rate = sf.read(str(folder / row["path"]), dtype="int16", always_2d=True)
            if rate != SAMPLE_RATE:
                raise ValueError(f"{folder / row['path']}: {rate} Hz, negatives must be 16 kHz")
            mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1).astype(np.int16)
            parts.append(mono)
            chunks.append(
                NegativeChunk(row["path"], row["class"], row["source"], row["license"], pos, mono.shape[0])
            )
            pos += mono.shape[0]
        audio = np.concatenate(parts)
        write_cached_array(array_file, audio, index_file, [c.__dict__ for c in chunks])
        log.info("negatives %s: %.2f h decoded into %s", split, pos / SAMPLE_RATE / 3600, array_file)
        return cls(np.load(array_file, mmap_mode="r"), chunks, f"{split}-{key}")

    def samples(self, start: int, stop: int) -> np.ndarray:
        """The pool's samples `start:stop` as float32 at full scale 1 (the stored int16 over
        32768): the one conversion every reader of the pool uses."""
        return np.asarray(self.audio[start:stop], dtype=np.float32) / 32768.0

    @property
    def hours(self) -> float:
        return self.audio.shape[0] / SAMPLE_RATE / 3600

    def hours_by_kind(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for c in self.chunks:
            out[c.kind] = out.get(c.kind, 0.0) + c.length / SAMPLE_RATE / 3600
        return {k: round(v, 3) for k, v in sorted(out.items())}

    def excerpt(self, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        """A random stretch of `n_samples` (crossing chunk borders is fine: streams do), float32."""
        return self.excerpt_at(n_samples, rng)[0]

    def excerpt_at(
        self, n_samples: int, rng: np.random.Generator, chunk_p: np.ndarray | None = None
    ) -> tuple[np.ndarray, int]:
        """`excerpt` and the sample where it starts in the pool (the same draw of `rng`).
        `chunk_p` (from `chunk_probabilities`): the excerpt starts in a chunk drawn with
        those probabilities, anywhere in it; None: anywhere in the pool, by time."""
        last = max(1, self.audio.shape[0] - n_samples)
        if chunk_p is None:
            start = int(rng.integers(0, last))
        else:
            chunk = self.chunks[int(rng.choice(len(self.chunks), p=chunk_p))]
            start = min(chunk.start + int(rng.integers(0, max(1, chunk.length))), last - 1)
        return self.samples(start, start + n_samples), start

    def chunk_probabilities(self, kind_weights: Mapping[str, float]) -> np.ndarray:
        """Per chunk, the probability that an excerpt starts in it when each kind's hours
        count `kind_weights[kind]` times (1 for kinds not named), e.g. {confuser_effects: 6}
        makes game effects six times as likely per hour as music. Unknown kinds and weights
        that are not positive are refused by name."""
        kinds = sorted({c.kind for c in self.chunks})
        unknown = sorted(set(kind_weights) - set(kinds))
        if unknown:
            raise ValueError(f"live.negative_kind_weights names kinds this pool lacks: {unknown} (kinds: {kinds})")
        bad = {k: w for k, w in kind_weights.items() if not float(w) > 0}
        if bad:
            raise ValueError(f"live.negative_kind_weights must be above 0, got {bad}")
        mass = np.array([c.length * float(kind_weights.get(c.kind, 1.0)) for c in self.chunks], dtype=float)
        return mass / mass.sum()
