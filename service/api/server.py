"""Runs the API with uvicorn inside the daemon's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

import uvicorn

from service.api.app import create_app
from service.api.security import exposure_problem
from service.config import ApiConfig

if TYPE_CHECKING:
    from service.daemon import Runtime

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The daemon owns SIGINT/SIGTERM and stops the server itself.
        yield


def listen(api: ApiConfig) -> socket.socket:
    """Check the exposure rule and bind the listening socket now, so that problems stop the start.

    Raises StartupError naming the problem (no token beyond loopback, port in use, ...).
    """
    from service.daemon import StartupError

    problem = exposure_problem(api)
    if problem:
        raise StartupError(problem)
    try:
        infos = socket.getaddrinfo(
            api.host, api.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        raise StartupError(
            f"api: cannot listen on {api.host}:{api.port}: {exc.strerror or exc}"
        ) from None
    sock.set_inheritable(True)
    return sock


def bound_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(runtime: Runtime, sock: socket.socket | None = None) -> None:
    """Serve until cancelled, then close connections gracefully (a few seconds at most)."""
    sock = sock or listen(runtime.settings.api)
    app = create_app(runtime)
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=3,
        ws_ping_interval=20.0,
    )
    server = _Server(config)
    url = bound_url(sock)
    runtime.extras["api_url"] = url
    log.info("API and dashboard on %s", url)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="uvicorn")
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), 5.0)
        except (TimeoutError, asyncio.CancelledError, Exception):
            server.force_exit = True
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        raise
    except Exception:
        log.exception("the API server failed")
        raise
    finally:
        sock.close()
