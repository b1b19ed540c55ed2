"""Class controls (enable, sensitivity, snooze) via `runtime.controls`, the object MQTT uses too."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi import Path as PathParam

from service.api.deps import ApiContext, context
from service.api.schemas import ClassOut, ClassPatch, ErrorOut
from service.events import utc_now

router = APIRouter(tags=["classes"])


@router.get("/api/classes", response_model=list[ClassOut], summary="Every class and its controls")
async def list_classes(ctx: Annotated[ApiContext, Depends(context)]) -> list[dict[str, Any]]:
    return [c.to_dict() for c in ctx.runtime.controls.all()]


@router.patch(
    "/api/classes/{name}",
    response_model=ClassOut,
    summary="Enable, tune or snooze a class",
    responses={404: {"model": ErrorOut, "description": "No such class."}},
)
async def patch_class(
    name: Annotated[str, PathParam(max_length=64, description="Class name.")],
    body: ClassPatch,
    ctx: Annotated[ApiContext, Depends(context)],
) -> dict[str, Any]:
    # async on purpose: control listeners (the pipeline's deciders) expect the daemon's loop.
    controls = ctx.runtime.controls
    if name not in controls.names:
        raise HTTPException(404, f"unknown class {name!r}; known: {', '.join(controls.names)}")
    given = body.model_fields_set
    until, clear = None, False
    if "snooze_minutes" in given:
        if body.snooze_minutes:
            until = utc_now() + timedelta(minutes=body.snooze_minutes)
        else:
            clear = True
    elif "snoozed_until" in given:
        until, clear = body.snoozed_until, body.snoozed_until is None
    try:
        changed = controls.update(
            name,
            enabled=body.enabled,
            sensitivity=body.sensitivity,
            snoozed_until=until,
            clear_snooze=clear,
        )
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    return changed.to_dict()
