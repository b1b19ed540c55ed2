"""GET /api/status: sources, model, sinks, uptime, live scores and class controls."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from service.api.deps import ApiContext, context
from service.api.schemas import StatusOut

router = APIRouter(tags=["status"])


@router.get("/api/status", response_model=StatusOut, summary="What harken is doing now")
async def status(ctx: Annotated[ApiContext, Depends(context)]) -> dict[str, Any]:
    # async: runs on the daemon's loop, so it reads the runners' state without racing them.
    return {"version": ctx.version, **ctx.runtime.status()}
