"""WS /api/live: live scores (~10 Hz), level, events, clip and control changes as JSON messages.

Messages (server to client), each a JSON object with `type`:
`hello` (version, model, sources, classes) once on connect, then
`live` (source, audio_s, scores, level_dbfs, active, at),
`event` (phase start|end, event), `clip` (id), `control` (control), `feedback` (id, verdict).

Authentication, when api.token is set: browsers cannot set headers on a WebSocket, so
the token is accepted as (in order) an `Authorization: Bearer` header, a subprotocol
`bearer.<token>` offered next to `harken` (the dashboard does this; the server answers
`harken`), or a `?token=` query parameter (last resort: it may end up in proxy logs).
A missing or wrong token closes the handshake with policy violation (HTTP 403).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from service.api.deps import ws_context
from service.api.live import CLOSE, LiveClient
from service.api.security import WS_PROTOCOL, token_matches, via_ingress, websocket_token

log = logging.getLogger(__name__)

router = APIRouter()

SEND_TIMEOUT_S = 5.0
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TRY_LATER = 1013


@router.websocket("/api/live")
async def live(websocket: WebSocket) -> None:
    ctx = ws_context(websocket)
    token = websocket.app.state.token
    if (
        token is not None
        and not via_ingress(websocket.scope)  # Home Assistant authenticated the ingress user
        and not token_matches(token, websocket_token(websocket))
    ):
        await websocket.close(code=CLOSE_POLICY, reason="missing or wrong token")
        return
    offered = websocket.scope.get("subprotocols", [])
    # A browser that offered subprotocols drops the connection unless one is echoed.
    await websocket.accept(subprotocol=WS_PROTOCOL if WS_PROTOCOL in offered else None)
    runtime = ctx.runtime
    contract = runtime.detector.contract
    hello = {
        "type": "hello",
        "version": ctx.version,
        "interval_s": ctx.hub.interval_s,
        "model": {
            "name": contract.model_name,
            "version": contract.model_version,
            "classes": list(contract.class_names),
        },
        "sources": [r.source.name for r in runtime.runners],
        "classes": [c.to_dict() for c in runtime.controls.all()],
    }
    client = ctx.hub.connect()
    try:
        await websocket.send_text(json.dumps(hello))
        for message in ctx.hub.snapshot():
            await websocket.send_text(json.dumps(message))
        sender = asyncio.create_task(_send(websocket, client))
        receiver = asyncio.create_task(_receive(websocket))
        done, pending = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.debug("live client ended: %r", task.exception())
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass  # the client went away during the greeting
    finally:
        ctx.hub.disconnect(client)


async def _send(websocket: WebSocket, client: LiveClient) -> None:
    while True:
        item = await client.queue.get()
        if item is CLOSE:
            code = CLOSE_TRY_LATER if client.dropped else CLOSE_GOING_AWAY
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    websocket.close(code=code, reason="too slow" if client.dropped else ""), 1.0
                )
            return
        # A client whose TCP window stays full is as slow as one whose queue overflows.
        await asyncio.wait_for(websocket.send_text(item), SEND_TIMEOUT_S)


async def _receive(websocket: WebSocket) -> None:
    """Reads (and ignores) what the client sends; returns when it disconnects."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
