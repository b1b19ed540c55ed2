"""Keeps the clips of user-marked false alarms as labelled training examples.

The folder `feedback/` next to the event store has the layout of the training data:
`feedback/MANIFEST.csv` with the columns
`path,class,split,source,license,group,onset,offset,quality,notes` and the clips under
`feedback/confuser_user_false_alarm/<event id>.wav`. A false alarm contains no target
sound, so it is a hard negative (`confuser_*`, onset/offset empty); `group` is the
source (room), so one room's recordings never straddle a train/dev split. Marking the
event a true positive later removes the example again.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import shutil
import threading
from pathlib import Path

from service.events import EventRecord, iso

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = [
    "path",
    "class",
    "split",
    "source",
    "license",
    "group",
    "onset",
    "offset",
    "quality",
    "notes",
]
FALSE_ALARM_CLASS = "confuser_user_false_alarm"


class FeedbackKeeper:
    """Copies false-alarm clips into the feedback folder and keeps its MANIFEST.csv."""

    def __init__(self, folder: Path, clips_dir: Path) -> None:
        self.folder = folder
        self.clips_dir = clips_dir
        self._lock = threading.Lock()

    @property
    def manifest(self) -> Path:
        return self.folder / "MANIFEST.csv"

    def example_path(self, event_id: str) -> str:
        return f"{FALSE_ALARM_CLASS}/{event_id}.wav"

    def keep(self, event: EventRecord) -> str | None:
        """Keep the event's clip as a false-alarm example; None while it has no clip yet."""
        clip = safe_clip(self.clips_dir, event.clip_path)
        if clip is None:
            return None
        relative = self.example_path(event.id)
        with self._lock:
            target = self.folder / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(clip, target)
            rows = [r for r in self._rows() if r["path"] != relative]
            rows.append(manifest_row(event, relative))
            self._write(rows)
        log.info("false alarm %s (%s) kept as %s", event.id, event.class_name, target)
        return relative

    def forget(self, event_id: str) -> None:
        """The user changed their mind: the event was a true positive after all."""
        relative = self.example_path(event_id)
        with self._lock:
            rows = self._rows()
            if any(r["path"] == relative for r in rows):
                self._write([r for r in rows if r["path"] != relative])
            (self.folder / relative).unlink(missing_ok=True)

    def _rows(self) -> list[dict[str, str]]:
        try:
            with self.manifest.open(newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f))
        except FileNotFoundError:
            return []

    def _write(self, rows: list[dict[str, str]]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        # Write-then-rename: a crash leaves the old manifest, never half a new one.
        tmp = self.manifest.with_suffix(".csv.tmp")
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
        os.replace(tmp, self.manifest)


def manifest_row(event: EventRecord, relative: str) -> dict[str, str]:
    peak = event.peak_score if event.peak_score is not None else event.score
    notes = (
        f"false_alarm_of={event.class_name}; peak_score={peak:.3f}; "
        f"started_at={iso(event.started_at)}; model_version={event.model_version}; "
        f"event_id={event.id}"
    )
    return {
        "path": relative,
        "class": FALSE_ALARM_CLASS,
        "split": "train",
        "source": "harken:user-feedback",
        "license": "private recording (user's own home)",
        "group": f"harken:{event.source}",
        "onset": "",
        "offset": "",
        "quality": "author-labelled",
        "notes": notes,
    }


def safe_clip(clips_dir: Path, clip_path: str | None) -> Path | None:
    """The clip file if it exists and lies inside `clips_dir`; None for anything else.

    The store records bare file names; anything with a directory part, a link that leads
    out of the folder or a missing file is refused rather than followed.
    """
    if not clip_path or clip_path != Path(clip_path).name or clip_path in (".", ".."):
        return None
    try:
        root = clips_dir.resolve(strict=True)
        candidate = (clips_dir / clip_path).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):  # missing, a link loop, a NUL byte
        return None
    if candidate.parent != root or not candidate.is_file():
        return None
    return candidate
