"""Event records: the one schema every sink, the store and the API share."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

EventPhase = Literal["start", "end"]


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime | None) -> str | None:
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z") if ts else None


def new_event_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class EventRecord:
    """One sound event of one class on one source.

    Audio times (`*_s`) count seconds from the start of the source's stream; wall-clock
    times are UTC and derived from the stream's wall-clock origin, so they stay right even
    when processing lags the microphone.
    """

    id: str
    source: str
    class_name: str
    start_s: float
    detected_s: float
    started_at: datetime
    detected_at: datetime
    score: float
    model_version: str
    level_dbfs: float | None = None
    end_s: float | None = None
    ended_at: datetime | None = None
    peak_score: float | None = None
    mean_score: float | None = None
    flicker: int | None = None
    clip_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_open(self) -> bool:
        return self.end_s is None

    @property
    def duration_s(self) -> float | None:
        return None if self.end_s is None else round(self.end_s - self.start_s, 3)

    def ended(
        self,
        end_s: float,
        ended_at: datetime,
        peak_score: float,
        mean_score: float,
        flicker: int,
        level_dbfs: float | None = None,
    ) -> EventRecord:
        return replace(
            self,
            end_s=end_s,
            ended_at=ended_at,
            peak_score=peak_score,
            mean_score=mean_score,
            flicker=flicker,
            level_dbfs=level_dbfs if level_dbfs is not None else self.level_dbfs,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form used by MQTT, webhooks, the API and the store."""
        data = asdict(self)
        data["class"] = data.pop("class_name")
        for key in ("started_at", "detected_at", "ended_at"):
            data[key] = iso(data[key])
        data["duration_s"] = self.duration_s
        data["state"] = "open" if self.is_open else "closed"
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EventRecord:
        values = dict(data)
        values["class_name"] = values.pop("class")
        for key in ("duration_s", "state"):
            values.pop(key, None)
        for key in ("started_at", "detected_at", "ended_at"):
            if values.get(key):
                values[key] = datetime.fromisoformat(str(values[key]).replace("Z", "+00:00"))
        return cls(**values)


@dataclass(frozen=True)
class EventMessage:
    """What the dispatcher hands to sinks: an event record at its start or at its end."""

    phase: EventPhase
    event: EventRecord

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, **self.event.to_dict()}


@dataclass(frozen=True)
class StreamClock:
    """Maps a source's audio time to wall-clock time: origin + seconds of audio."""

    origin: datetime

    def at(self, audio_s: float) -> datetime:
        return self.origin + timedelta(seconds=audio_s)
