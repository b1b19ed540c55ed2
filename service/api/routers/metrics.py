"""GET /metrics: Prometheus text format."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse

from service.api.deps import ApiContext, context
from service.api.metrics import CONTENT_TYPE, render_metrics

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    summary="Prometheus metrics",
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(ctx: Annotated[ApiContext, Depends(context)]) -> PlainTextResponse:
    return PlainTextResponse(render_metrics(ctx.runtime, ctx.hub), media_type=CONTENT_TYPE)
