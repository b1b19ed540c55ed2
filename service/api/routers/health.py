"""GET /api/health: open to everyone (no token), for container and uptime checks."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from service.api.deps import ApiContext, context
from service.api.schemas import HealthOut

router = APIRouter(tags=["health"])


@router.get("/api/health", response_model=HealthOut, summary="Liveness check (no token needed)")
async def health(ctx: Annotated[ApiContext, Depends(context)]) -> HealthOut:
    return HealthOut(status="ok", version=ctx.version, uptime_s=round(ctx.runtime.uptime_s, 1))
