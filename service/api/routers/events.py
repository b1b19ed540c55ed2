"""Event history: list with filters and a cursor, one event, its clip, and user feedback."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.responses import FileResponse
from pydantic import BeforeValidator

from service.api.deps import ApiContext, context, event_out
from service.api.feedback import safe_clip
from service.api.schemas import ErrorOut, EventOut, EventPage, FeedbackIn, FeedbackOut
from service.events import EventRecord

log = logging.getLogger(__name__)

router = APIRouter(tags=["events"])

MAX_PAGE = 500
EventId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_\-]{1,64}$", description="Event id.")]
NOT_FOUND = {404: {"model": ErrorOut, "description": "No such event (or no clip)."}}


def _iso_only(value: object) -> object:
    """Pydantic would read a bare number as a Unix time; the API promises ISO 8601 only."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
        raise ValueError("expected an ISO 8601 time such as 2025-01-31T22:00:00Z")
    return value


IsoTime = Annotated[datetime, BeforeValidator(_iso_only)]


def _utc(value: datetime | None) -> datetime | None:
    """Times without a zone are taken as UTC, the zone of every time harken reports."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _event(ctx: ApiContext, event_id: str) -> EventRecord:
    record = ctx.runtime.store.get_event(event_id)
    if record is None:
        raise HTTPException(404, f"no event with id {event_id!r}")
    return record


@router.get("/api/events", response_model=EventPage, summary="Event history, newest first")
def list_events(
    ctx: Annotated[ApiContext, Depends(context)],
    class_name: Annotated[
        str | None, Query(alias="class", max_length=64, description="Only this class.")
    ] = None,
    source: Annotated[str | None, Query(max_length=64, description="Only this source.")] = None,
    since: Annotated[
        IsoTime | None,
        Query(description="Events that started at or after this time (ISO 8601; UTC if no zone)."),
    ] = None,
    until: Annotated[
        IsoTime | None, Query(description="Events that started before this time.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")] = 50,
    cursor: Annotated[
        str | None,
        Query(pattern=r"^[0-9]{1,18}$", description="`next_cursor` of the previous page."),
    ] = None,
) -> dict[str, Any]:
    since, until = _utc(since), _utc(until)
    if since is not None and until is not None and since > until:
        raise HTTPException(422, "since must not be later than until")
    # One row more than asked tells whether another page exists.
    rows = ctx.runtime.store.list_events(
        class_name=class_name,
        source=source,
        since=since,
        until=until,
        limit=limit + 1,
        before_seq=int(cursor) if cursor is not None else None,
    )
    page = rows[:limit]
    next_cursor = str(page[-1][0]) if len(rows) > limit else None
    return {"events": [event_out(record) for _, record in page], "next_cursor": next_cursor}


@router.get(
    "/api/events/{event_id}", response_model=EventOut, responses=NOT_FOUND, summary="One event"
)
def get_event(event_id: EventId, ctx: Annotated[ApiContext, Depends(context)]) -> dict[str, Any]:
    return event_out(_event(ctx, event_id))


@router.get(
    "/api/events/{event_id}/clip.wav",
    response_class=FileResponse,
    summary="The event's audio (WAV)",
    responses={
        **NOT_FOUND,
        200: {
            "content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}}},
            "description": "16 kHz mono PCM WAV with pre- and post-roll.",
        },
    },
)
def get_clip(event_id: EventId, ctx: Annotated[ApiContext, Depends(context)]) -> FileResponse:
    record = _event(ctx, event_id)
    if not record.clip_path:
        raise HTTPException(
            404,
            f"event {event_id} has no clip (yet: clips are written after the event's post-roll)",
        )
    path = safe_clip(ctx.runtime.store.clips_dir, record.clip_path)
    if path is None:
        log.warning(
            "event %s: clip %r is missing or outside the clips folder", event_id, record.clip_path
        )
        raise HTTPException(404, f"the clip of event {event_id} is not available")
    return FileResponse(
        path,
        media_type="audio/wav",
        filename=f"{record.class_name}-{event_id}.wav",
        content_disposition_type="inline",
    )


@router.post(
    "/api/events/{event_id}/feedback",
    response_model=FeedbackOut,
    responses=NOT_FOUND,
    summary="Mark an event a true positive or a false alarm",
)
async def feedback(
    event_id: EventId, body: FeedbackIn, ctx: Annotated[ApiContext, Depends(context)]
) -> dict[str, Any]:
    store = ctx.runtime.store
    _event(ctx, event_id)
    store.set_feedback(event_id, body.verdict)
    record = _event(ctx, event_id)
    example = None
    try:
        if body.verdict == "false_alarm":
            example = await asyncio.to_thread(ctx.keeper.keep, record)
        else:
            await asyncio.to_thread(ctx.keeper.forget, event_id)
    except OSError as exc:
        # The verdict is stored; only the copy for retraining failed. Say so in the log.
        log.error("feedback on event %s stored, but the example was not kept: %s", event_id, exc)
    ctx.hub.broadcast({"type": "feedback", "id": event_id, "verdict": body.verdict})
    return {"event": event_out(record), "example": example}
