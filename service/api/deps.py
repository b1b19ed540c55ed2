"""What routers need from the running daemon, stored on `app.state` by `create_app`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request, WebSocket

from service.api.feedback import FeedbackKeeper
from service.api.live import LiveHub
from service.events import EventRecord

if TYPE_CHECKING:
    from service.daemon import Runtime


@dataclass
class ApiContext:
    runtime: Runtime
    hub: LiveHub
    keeper: FeedbackKeeper
    version: str


def context(request: Request) -> ApiContext:
    return request.app.state.context


def ws_context(websocket: WebSocket) -> ApiContext:
    return websocket.app.state.context


def clip_url(event_id: str) -> str:
    return f"/api/events/{event_id}/clip.wav"


def event_out(record: EventRecord) -> dict:
    """EventRecord -> the EventOut wire form (feedback lifted out of `extra`, clip link added)."""
    data = record.to_dict()
    extra = dict(data.get("extra") or {})
    data["feedback"] = extra.pop("feedback", None)
    data["extra"] = extra
    data["clip_url"] = clip_url(record.id) if record.clip_path else None
    return data
