"""Ground truth: the data set's MANIFEST.csv and DCASE-style TSV annotations.

Both formats are read into the same `Annotation(file, class_name, onset_s, offset_s)` list,
which training (strong labels) and evaluation (event matching) share.

MANIFEST.csv (columns path,class,split,source,license,group,onset,offset,quality,notes):

- a clip of a target class (`baby_cry`, `smoke_alarm`, `glass_break`) is ONE event. Its
  onset/offset come from the manifest when both are given; otherwise from the clip's own
  energy-based active span (`models.scenes.active_span`: first to last active frame, the
  natural pauses inside kept); a clip with no detectable activity (digital silence) is
  labelled over its whole length, so that no target clip silently loses its event;
- `background` and `confuser_<kind>` clips contain no target event (hard negatives).

DCASE TSV (tab separated: filename, onset, offset, event_label; header line optional): a
line with the filename alone lists a file without events (as DCASE 2017 Task 2 does), so
negative files count towards false alarms.

Every problem (malformed line, unknown class, missing audio file) is reported in ONE
`ManifestError` whose message names the file and line of each problem.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from service.contract import KNOWN_CLASSES

log = logging.getLogger(__name__)

MANIFEST_NAME = "MANIFEST.csv"
MANIFEST_COLUMNS = (
    "path", "class", "split", "source", "license", "group", "onset", "offset", "quality", "notes",
)
TARGET_CLASSES: tuple[str, ...] = KNOWN_CLASSES
SPLITS = ("train", "dev", "test")
QUALITIES = ("verified", "author-labelled", "weak", "unknown")
#: Problems listed in one error message before the rest are only counted.
MAX_LISTED_PROBLEMS = 20

# Licence text that makes a clip unusable for an openly licensed model: explicit
# non-commercial terms, no licence at all, or a licence nobody recorded.
_RESTRICTED = re.compile(
    r"NO LICENSE|-NC\b|-NC-|non-commercial|internal evaluation only|not recorded|not stated|"
    r"unknown|not listed|variant not stated|Sampling\+",
    re.IGNORECASE,
)
_OPEN = re.compile(r"ODbL|CC0|CC-BY|\bL?GPL|\bMIT\b|Apache", re.IGNORECASE)


class ManifestError(ValueError):
    """Ground truth that cannot be used; the message names file and line of each problem."""


def is_negative_class(class_name: str) -> bool:
    """`background` and `confuser_<kind>`: audio that contains no target event."""
    return class_name == "background" or (
        class_name.startswith("confuser_") and len(class_name) > len("confuser_")
    )


def licence_is_open(licence: str) -> bool:
    """True when the licence text names an open licence (ODbL, CC0, CC-BY, CC-BY-SA, GPL,
    LGPL, MIT, Apache) and nothing that restricts it (NC terms, "NO LICENSE", "internal
    evaluation only", provenance or per-clip licence not recorded). Conservative: a clip
    whose licence is uncertain is not open."""
    return bool(_OPEN.search(licence)) and not _RESTRICTED.search(licence)


@dataclass(frozen=True)
class Annotation:
    """One target event in one audio file. `file` is the path as the ground truth names it
    (relative to the data folder for a manifest, as written in a TSV)."""

    file: str
    class_name: str
    onset_s: float
    offset_s: float

    @property
    def duration_s(self) -> float:
        return self.offset_s - self.onset_s


@dataclass(frozen=True)
class ManifestRow:
    """One line of MANIFEST.csv. `line` is its 1-based line number in the file."""

    path: str
    class_name: str
    split: str
    source: str
    license: str
    group: str
    onset_s: float | None
    offset_s: float | None
    quality: str
    notes: str
    root: Path
    line: int

    @property
    def file(self) -> Path:
        """Absolute path of the audio file."""
        return self.root / self.path

    @property
    def is_target(self) -> bool:
        return self.class_name in TARGET_CLASSES

    @property
    def is_negative(self) -> bool:
        return is_negative_class(self.class_name)

    @property
    def is_open_licence(self) -> bool:
        return licence_is_open(self.license)

    @property
    def where(self) -> str:
        """`MANIFEST.csv:LINE`, for messages."""
        return f"{self.root / MANIFEST_NAME}:{self.line}"


@dataclass(frozen=True)
class GroundTruth:
    """The files of an evaluation set and the target events in them (files without any
    annotation are negatives)."""

    files: tuple[str, ...]
    annotations: tuple[Annotation, ...]
    root: Path

    def events_of(self, file: str) -> list[Annotation]:
        return [a for a in self.annotations if a.file == file]


class _Problems:
    """Collects problems so that one error lists all of them (nothing is lost)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")

    def raise_if_any(self) -> None:
        if not self.items:
            return
        shown = self.items[:MAX_LISTED_PROBLEMS]
        more = len(self.items) - len(shown)
        tail = f"\n  ... and {more} more" if more else ""
        count = f"{len(self.items)} problem{'s' if len(self.items) != 1 else ''}"
        raise ManifestError(f"{self.what}: {count}\n  " + "\n  ".join(shown) + tail)


def _manifest_path(path: str | Path) -> Path:
    p = Path(path)
    return p / MANIFEST_NAME if p.is_dir() else p


def _parse_time(text: str) -> float | None:
    """A time in seconds; '' is None; raises ValueError for anything else non-finite."""
    text = text.strip()
    if not text:
        return None
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def read_manifest(
    path: str | Path,
    *,
    split: str | None = None,
    classes: Iterable[str] | None = None,
    qualities: Iterable[str] | None = None,
    open_licences_only: bool = False,
    check_files: bool = True,
) -> list[ManifestRow]:
    """Read MANIFEST.csv (or the folder holding it) and keep the rows that match.

    Every row is validated (not only the kept ones), so a broken manifest fails however
    it is filtered. `classes` may name `confuser_*` to mean every confuser kind.
    `check_files` also checks that each kept row's audio file exists.
    Raises ManifestError listing each problem as `FILE:LINE: what is wrong`.
    """
    manifest = _manifest_path(path)
    if not manifest.is_file():
        raise ManifestError(f"{manifest}: no such manifest file")
    root = manifest.parent
    problems = _Problems(str(manifest))
    rows: list[ManifestRow] = []
    with manifest.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            expected = ",".join(MANIFEST_COLUMNS)
            raise ManifestError(f"{manifest}:1: empty file (expected header {expected})")
        header = [h.strip() for h in header]
        missing = [c for c in MANIFEST_COLUMNS if c not in header]
        if missing:
            raise ManifestError(f"{manifest}:1: header lacks column(s) {', '.join(missing)} "
                                f"(expected {','.join(MANIFEST_COLUMNS)})")
        index = {name: header.index(name) for name in MANIFEST_COLUMNS}
        for fields in reader:
            line = reader.line_num
            where = f"{manifest}:{line}"
            if not fields or all(not f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                problems.add(where, f"{len(fields)} fields, header has {len(header)}")
                continue
            get = {name: fields[i].strip() for name, i in index.items()}
            row = _manifest_row(get, root, line, where, problems)
            if row is not None:
                rows.append(row)
    problems.raise_if_any()
    kept = filter_rows(rows, split=split, classes=classes, qualities=qualities,
                       open_licences_only=open_licences_only)
    if check_files:
        problems = _Problems(str(manifest))
        for row in kept:
            if not row.file.is_file():
                problems.add(row.where, f"audio file {row.path} does not exist")
        problems.raise_if_any()
    return kept


def _manifest_row(get: dict[str, str], root: Path, line: int, where: str,
                  problems: _Problems) -> ManifestRow | None:
    ok = True
    if not get["path"]:
        problems.add(where, "empty path")
        ok = False
    cls = get["class"]
    if cls not in TARGET_CLASSES and not is_negative_class(cls):
        problems.add(where, f"unknown class {cls!r} (expected one of {', '.join(TARGET_CLASSES)}, "
                            "background or confuser_<kind>)")
        ok = False
    if get["split"] not in SPLITS:
        problems.add(where, f"unknown split {get['split']!r} (expected {', '.join(SPLITS)})")
        ok = False
    if get["quality"] and get["quality"] not in QUALITIES:
        problems.add(where, f"unknown quality {get['quality']!r} (expected {', '.join(QUALITIES)})")
        ok = False
    onset = offset = None
    try:
        onset, offset = _parse_time(get["onset"]), _parse_time(get["offset"])
    except ValueError:
        problems.add(where, f"onset {get['onset']!r} / offset {get['offset']!r}: not numbers")
        ok = False
    if ok:
        if (onset is None) != (offset is None):
            problems.add(where, "give both onset and offset, or neither")
            ok = False
        elif onset is not None and offset is not None:
            if onset < 0 or offset <= onset:
                problems.add(where, f"onset {onset} / offset {offset}: need 0 <= onset < offset")
                ok = False
            elif cls not in TARGET_CLASSES:
                problems.add(where, f"class {cls!r} has no events, yet onset/offset are given")
                ok = False
    if not ok:
        return None
    return ManifestRow(
        path=get["path"], class_name=cls, split=get["split"], source=get["source"],
        license=get["license"], group=get["group"], onset_s=onset, offset_s=offset,
        quality=get["quality"] or "unknown", notes=get["notes"], root=root, line=line,
    )


def filter_rows(
    rows: Iterable[ManifestRow],
    *,
    split: str | None = None,
    classes: Iterable[str] | None = None,
    qualities: Iterable[str] | None = None,
    open_licences_only: bool = False,
    licence: Callable[[str], bool] | None = None,
) -> list[ManifestRow]:
    """Rows of one split, of some classes (`confuser_*` = every confuser kind,
    `negative` = background and confusers), of some qualities, under open licences
    (`licence_is_open`) or a licence predicate of your own."""
    wanted = set(classes) if classes is not None else None
    quality_set = set(qualities) if qualities is not None else None

    def class_ok(name: str) -> bool:
        if wanted is None or name in wanted:
            return True
        if "negative" in wanted and is_negative_class(name):
            return True
        return "confuser_*" in wanted and name.startswith("confuser_")

    return [
        r for r in rows
        if (split is None or r.split == split)
        and class_ok(r.class_name)
        and (quality_set is None or r.quality in quality_set)
        and (not open_licences_only or r.is_open_licence)
        and (licence is None or licence(r.license))
    ]


def manifest_annotations(
    rows: Sequence[ManifestRow],
    span: str = "active",
    load: Callable[[Path], object] | None = None,
) -> list[Annotation]:
    """One annotation per target-class row; negatives give none.

    Manifest onset/offset win when given. Otherwise `span="active"` uses the clip's
    energy-based active span (reads the audio), `span="whole"` the whole clip (reads only
    the duration). A silent clip falls back to its whole length.
    """
    if span not in ("active", "whole"):
        raise ValueError(f"span must be 'active' or 'whole', not {span!r}")
    import numpy as np
    import soundfile as sf

    from models.scenes import active_span
    from service.audio.sources import SourceError, read_audio

    reader = load or read_audio
    out: list[Annotation] = []
    for row in rows:
        if not row.is_target:
            continue
        if row.onset_s is not None and row.offset_s is not None:
            out.append(Annotation(row.path, row.class_name, row.onset_s, row.offset_s))
            continue
        try:
            if span == "whole":
                info = sf.info(str(row.file))
                out.append(Annotation(row.path, row.class_name, 0.0, round(info.duration, 4)))
                continue
            audio = np.asarray(reader(row.file), dtype=np.float32)
        except (SourceError, RuntimeError, OSError) as exc:
            raise ManifestError(f"{row.where}: cannot read {row.path}: {exc}") from None
        found = active_span(audio)
        if found is None:
            log.debug("%s: no activity found, labelled over the whole clip", row.path)
            out.append(Annotation(row.path, row.class_name, 0.0, round(audio.shape[0] / 16000, 4)))
        else:
            out.append(Annotation(row.path, row.class_name, found.onset_s, found.offset_s))
    return out


def read_tsv(
    path: str | Path,
    class_names: Iterable[str] = TARGET_CLASSES,
    audio_dir: str | Path | None = None,
    check_files: bool = True,
) -> GroundTruth:
    """Read DCASE-style ground truth: `filename<TAB>onset<TAB>offset<TAB>event_label`.

    A header line (first field `filename`) is optional; a line with the filename alone is
    a file without events. Filenames are resolved against `audio_dir` (default: the TSV's
    folder) when `check_files`. Labels must be in `class_names`.
    Raises ManifestError listing each problem as `FILE:LINE: what is wrong`.
    """
    tsv = Path(path)
    if not tsv.is_file():
        raise ManifestError(f"{tsv}: no such annotation file")
    root = Path(audio_dir) if audio_dir is not None else tsv.parent
    known = tuple(class_names)
    problems = _Problems(str(tsv))
    files: dict[str, int] = {}  # filename -> first line, in order of appearance
    annotations: list[Annotation] = []
    with tsv.open(encoding="utf-8") as handle:
        for line_no, raw in enumerate(handle, start=1):
            text = raw.rstrip("\r\n")
            where = f"{tsv}:{line_no}"
            if not text.strip() or text.lstrip().startswith("#"):
                continue
            fields = [f.strip() for f in text.split("\t")]
            if line_no == 1 and fields[0].lower() in ("filename", "file", "audio_filename"):
                continue
            name = fields[0]
            if not name:
                problems.add(where, "empty filename")
                continue
            files.setdefault(name, line_no)
            if len(fields) == 1 or (len(fields) >= 2 and not any(fields[1:])):
                continue  # a file without events
            if len(fields) != 4:
                problems.add(where, f"{len(fields)} tab-separated fields; expected filename, "
                                    "onset, offset, event_label (or the filename alone)")
                continue
            try:
                onset, offset = _parse_time(fields[1]), _parse_time(fields[2])
            except ValueError:
                problems.add(where, f"onset {fields[1]!r} / offset {fields[2]!r}: not numbers")
                continue
            if onset is None or offset is None or onset < 0 or offset <= onset:
                problems.add(where, f"onset {fields[1]!r} / offset {fields[2]!r}: "
                                    "need 0 <= onset < offset")
                continue
            label = fields[3]
            if label not in known:
                problems.add(where, f"unknown label {label!r} (known: {', '.join(known)})")
                continue
            annotations.append(Annotation(name, label, onset, offset))
    if check_files:
        for name, line_no in files.items():
            if not (root / name).is_file():
                problems.add(f"{tsv}:{line_no}", f"audio file {root / name} does not exist")
    problems.raise_if_any()
    if not files:
        raise ManifestError(f"{tsv}: no files listed")
    return GroundTruth(tuple(files), tuple(annotations), root)


def manifest_ground_truth(
    path: str | Path,
    split: str | None = "dev",
    span: str = "active",
    **filters: object,
) -> GroundTruth:
    """The files and events of a manifest split, as evaluation uses them."""
    rows = read_manifest(path, split=split, **filters)  # type: ignore[arg-type]
    if not rows:
        raise ManifestError(f"{_manifest_path(path)}: no rows for split {split!r}")
    annotations = tuple(manifest_annotations(rows, span))
    return GroundTruth(tuple(r.path for r in rows), annotations, _manifest_path(path).parent)
