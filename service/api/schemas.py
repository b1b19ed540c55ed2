"""Request and response models of the REST API: the one place the wire format is defined.

Event fields mirror `EventRecord.to_dict()`, the schema every sink shares, so an event
looks the same over MQTT, webhooks, the WebSocket and here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.controls import SNOOZE_MAX


class ErrorItem(BaseModel):
    loc: str = Field(description="Where the problem is, e.g. `query.limit` or `body.sensitivity`.")
    msg: str = Field(description="What is wrong with it.")


class ErrorOut(BaseModel):
    """Every 4xx answer: one sentence in `detail`; validation errors list each problem too."""

    detail: str = Field(description="What went wrong, in one sentence.")
    errors: list[ErrorItem] | None = Field(
        None, description="Each invalid field (validation errors only)."
    )


class HealthOut(BaseModel):
    status: Literal["ok"] = Field(description="Always `ok` when the process answers.")
    version: str = Field(description="harken version.")
    uptime_s: float = Field(description="Seconds since the daemon started.")


class EventOut(BaseModel):
    """One sound event; the same fields as on MQTT and webhooks, plus API links."""

    model_config = ConfigDict(populate_by_name=True)

    id: str = Field(description="Event id.")
    source: str = Field(description="Name of the source (room) that heard it.")
    class_name: str = Field(alias="class", description="Sound class, e.g. `smoke_alarm`.")
    state: Literal["open", "closed"] = Field(description="`open` while the sound goes on.")
    start_s: float = Field(
        description="Audio time of the onset, seconds since the source's stream started."
    )
    detected_s: float = Field(description="Audio time at which the decision fired.")
    end_s: float | None = Field(None, description="Audio time of the end (null while open).")
    duration_s: float | None = Field(None, description="end_s - start_s (null while open).")
    started_at: str = Field(description="Wall-clock onset, UTC ISO 8601.")
    detected_at: str = Field(description="Wall-clock time of the decision, UTC ISO 8601.")
    ended_at: str | None = Field(
        None, description="Wall-clock end, UTC ISO 8601 (null while open)."
    )
    score: float = Field(description="Smoothed score when the event started.")
    peak_score: float | None = Field(None, description="Highest score during the event.")
    mean_score: float | None = Field(None, description="Mean score during the event.")
    flicker: int | None = Field(
        None, description="Score crossings of the threshold inside the event."
    )
    level_dbfs: float | None = Field(None, description="Peak sound level during the event, dBFS.")
    model_version: str = Field(description="Version of the model that decided.")
    clip_path: str | None = Field(None, description="File name of the stored clip, if any.")
    clip_url: str | None = Field(
        None, description="Where to fetch the clip (WAV), null until it is written."
    )
    feedback: Literal["true_positive", "false_alarm"] | None = Field(
        None, description="User's verdict, if given."
    )
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Additional fields (e.g. `closed_by`)."
    )


class EventPage(BaseModel):
    events: list[EventOut] = Field(description="Newest first.")
    next_cursor: str | None = Field(
        None, description="Pass as `cursor` to get the next (older) page; null at the end."
    )


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    verdict: Literal["true_positive", "false_alarm"] = Field(
        description="`false_alarm` keeps the event's clip as a labelled negative example "
        "for retraining."
    )


class FeedbackOut(BaseModel):
    event: EventOut
    example: str | None = Field(
        None,
        description="Path of the kept example relative to the feedback folder, "
        "or null (not a false alarm, or its clip is not written yet: it is kept when it is).",
    )


class ClassOut(BaseModel):
    name: str = Field(description="Class name.")
    enabled: bool = Field(description="Events of this class are published.")
    sensitivity: float = Field(
        description="0 = only certain sounds, 0.5 = as tuned, 1 = most sensitive."
    )
    snoozed: bool = Field(description="True while snoozed.")
    snoozed_until: str | None = Field(
        None, description="End of the snooze, UTC ISO 8601, null when not snoozed."
    )


class ClassPatch(BaseModel):
    """Change any of a class's controls; fields left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = Field(None, description="Publish events of this class.")
    sensitivity: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="0 = only certain sounds, 0.5 = as tuned, 1 = most sensitive.",
    )
    snoozed_until: datetime | None = Field(
        None,
        description="Snooze until this time (with a time zone); `null` ends a snooze.",
    )
    snooze_minutes: float | None = Field(
        None,
        ge=0.0,
        le=SNOOZE_MAX.total_seconds() / 60,
        allow_inf_nan=False,
        description="Snooze for this many minutes from now; 0 ends a snooze.",
    )

    @model_validator(mode="after")
    def _one_snooze(self) -> ClassPatch:
        given = self.model_fields_set
        if not given:
            raise ValueError(
                "nothing to change: give enabled, sensitivity, snoozed_until or snooze_minutes"
            )
        if "snoozed_until" in given and "snooze_minutes" in given:
            raise ValueError("give snoozed_until or snooze_minutes, not both")
        if self.snoozed_until is not None and self.snoozed_until.tzinfo is None:
            raise ValueError("snoozed_until must carry a time zone, e.g. 2025-01-01T22:00:00Z")
        for name in ("enabled", "sensitivity", "snooze_minutes"):
            if name in given and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


class ModelInfo(BaseModel):
    name: str
    version: str
    classes: list[str]
    path: str


class SourceStatusOut(BaseModel):
    name: str
    url: str
    state: str = Field(description="starting | running | degraded | ended | stopped")
    error: str | None = None
    overruns: int = Field(description="Audio blocks dropped because the pipeline fell behind.")
    restarts: int
    audio_s: float = Field(description="Audio seconds processed.")
    scores: dict[str, float] = Field(description="Latest per-class scores.")
    level_dbfs: float = Field(description="Latest sound level, dBFS.")


class StatusOut(BaseModel):
    version: str
    uptime_s: float
    model: ModelInfo
    sources: list[SourceStatusOut]
    sinks: dict[str, dict[str, Any]] = Field(
        description="Per sink: state, delivered, failures, dropped, queued, ..."
    )
    classes: list[ClassOut]
