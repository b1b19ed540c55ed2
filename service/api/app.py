"""The FastAPI app factory: routers per resource, token check, error format, static dashboard."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.deps import ApiContext
from service.api.feedback import FeedbackKeeper
from service.api.limits import BodyLimit, RateLimit, send_json
from service.api.live import LiveHub
from service.api.routers import classes, dashboard, events, health, live, metrics, status
from service.api.schemas import ErrorOut
from service.api.security import (
    INGRESS_SCOPE_KEY,
    IngressPeers,
    host_allowed,
    is_loopback,
    require_token,
)
from service.sinks.store import StoreError

if TYPE_CHECKING:
    from service.daemon import Runtime

log = logging.getLogger(__name__)

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorOut,
        "description": "Bad request (e.g. a Host header that is not allowed).",
    },
    413: {"model": ErrorOut, "description": "Request body larger than api.max_body_bytes."},
    422: {
        "model": ErrorOut,
        "description": "Invalid parameters or body; `errors` names each field.",
    },
    429: {
        "model": ErrorOut,
        "description": "Too many requests from this client (api.rate_limit_per_s); see Retry-After.",
    },
    503: {"model": ErrorOut, "description": "The event store cannot be written (disk full?)."},
}
PROTECTED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing or wrong bearer token."},
}


def harken_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("harken")
    except PackageNotFoundError:
        return "dev"


def attach(runtime: Runtime) -> ApiContext:
    """Create (once) the live hub sink and the feedback keeper, and hook clip notifications.

    Must run before the dispatcher starts (it does, from `daemon.add_sinks`), so that the
    hub gets its queue; `create_app` calls it too, which makes the app usable on its own.
    """
    existing = runtime.extras.get("api_context")
    if existing is not None:
        return existing
    hub = LiveHub(runtime.controls)
    runtime.dispatcher.add_sink(hub)
    store = runtime.store
    keeper = FeedbackKeeper(store.path.parent / "feedback", store.clips_dir)
    ctx = ApiContext(runtime, hub, keeper, harken_version())
    runtime.extras["api_context"] = ctx

    for runner in runtime.runners:
        previous = runner.on_clip

        def on_clip(event_id: str, name: str, previous=previous) -> None:
            if previous is not None:
                previous(event_id, name)
            # A false alarm marked before its clip was written is kept now.
            record = store.get_event(event_id)
            if record is not None and record.extra.get("feedback") == "false_alarm":
                try:
                    keeper.keep(record)
                except OSError as exc:
                    log.error("false alarm %s not kept: %s", event_id, exc)
            hub.clip_ready(event_id)

        runner.on_clip = on_clip
    return ctx


class AccessGuard:
    """Who may talk to harken at all, checked before any route.

    - A request whose TCP peer is the ingress proxy (`api.ingress`) was authenticated by Home
      Assistant: it is marked in the scope (`INGRESS_SCOPE_KEY`, with its X-Ingress-Path) and
      passes; the routes then need no token for it.
    - Without a token, harken answers only requests addressed to a loopback name, so that a web
      page the user visits cannot reach the API through DNS rebinding, and refuses WebSockets
      opened by another site's page (checked by Origin).
    - Without a token but listening beyond loopback (allowed only with ingress on), any other
      peer than loopback is refused: a Host header saying "localhost" proves nothing.
    """

    def __init__(
        self, app: ASGIApp, token_set: bool, ingress: IngressPeers, loopback_peers_only: bool
    ) -> None:
        self.app = app
        self.token_set = token_set
        self.ingress = ingress
        self.loopback_peers_only = loopback_peers_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        peer = client[0] if client else None
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.ingress and self.ingress.match(peer):
            scope[INGRESS_SCOPE_KEY] = headers.get("x-ingress-path", "")
            await self.app(scope, receive, send)
            return
        if self.token_set:
            await self.app(scope, receive, send)
            return
        if self.loopback_peers_only and not (peer and is_loopback(peer)):
            await _refuse(
                scope, send, 403,
                f"client {peer} not allowed: without api.token harken answers only through Home "
                "Assistant ingress and to this machine; set api.token to allow other clients",
            )
            return
        host = headers.get("host")
        origin = headers.get("origin")
        bad_origin = origin is not None and not host_allowed(origin.split("://", 1)[-1].split("/", 1)[0])
        if not host_allowed(host) or (scope["type"] == "websocket" and bad_origin):
            await _refuse(
                scope, send, 400,
                f"host {host!r} not allowed: without api.token harken answers only to "
                "localhost / 127.0.0.1 / ::1",
            )
            return
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, send: Send, status: int, detail: str) -> None:
    if scope["type"] == "websocket":
        # Closing before accepting makes the server answer the handshake with 403.
        await send({"type": "websocket.close", "code": 1008, "reason": "not allowed"})
        return
    await send_json(send, status, detail)


def _describe(error: dict[str, Any]) -> tuple[str, str]:
    loc = ".".join(str(p) for p in error.get("loc", ())) or "request"
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    value = error.get("input")
    if (
        error.get("type") not in ("missing", "extra_forbidden", "json_invalid")
        and isinstance(value, str | int | float | bool)
        and not isinstance(value, dict | list)
    ):
        shown = repr(value)
        message += f" (got {shown[:60] + '…' if len(shown) > 60 else shown})"
    return loc, message


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    items = [_describe(e) for e in exc.errors()]
    detail = "; ".join(f"{loc}: {msg}" for loc, msg in items)
    return JSONResponse(
        {
            "detail": f"invalid request: {detail}",
            "errors": [{"loc": loc, "msg": msg} for loc, msg in items],
        },
        status_code=422,
    )


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    # A full disk or an unwritable store is the daemon's condition, not a bug of the request.
    log.error("%s %s: event store error: %s", request.method, request.url.path, exc)
    return JSONResponse({"detail": f"the event store cannot be written: {exc}"}, status_code=503)


def create_app(runtime: Runtime) -> FastAPI:
    """The HTTP app of a runtime: REST under /api, WS /api/live, /metrics and the dashboard."""
    ctx = attach(runtime)
    token = runtime.settings.api.token

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ingress = runtime.settings.api.ingress
        access = "token required" if token else "no token: loopback only"
        if ingress.enabled:
            access += f"; ingress from {', '.join(ingress.trusted_proxies)} trusted"
        log.info("API ready (%s)", access)
        yield

    app = FastAPI(
        title="harken",
        version=ctx.version,
        lifespan=lifespan,
        responses=ERRORS,
        description="Local-first home sound-event monitor. Every endpoint but /api/health needs "
        "`Authorization: Bearer <api.token>` when a token is configured.",
        # Swagger UI and ReDoc load their code from a CDN; harken stays local (/openapi.json stays).
        docs_url=None,
        redoc_url=None,
    )
    app.state.context = ctx
    app.state.token = token
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StoreError, _store_error)
    protected = [Depends(require_token)]
    app.include_router(health.router)
    for module in (status, events, classes, metrics):
        app.include_router(module.router, dependencies=protected, responses=PROTECTED)
    app.include_router(live.router)  # checks the token itself (headers, subprotocol or query)
    app.include_router(dashboard.router)
    app.mount("/static", StaticFiles(directory=dashboard.STATIC_DIR), name="static")
    api = runtime.settings.api
    # The last added runs first: the rate limit is the cheapest check, then the host, then the body.
    app.add_middleware(BodyLimit, max_bytes=api.max_body_bytes)
    ingress = IngressPeers(api.ingress.trusted_proxies if api.ingress.enabled else None)
    app.add_middleware(
        AccessGuard,
        token_set=token is not None,
        ingress=ingress,
        loopback_peers_only=token is None and not is_loopback(api.host),
    )
    app.add_middleware(RateLimit, rate_per_s=api.rate_limit_per_s, burst=api.rate_limit_burst)
    return app
