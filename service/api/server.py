"""Runs the API with uvicorn inside the daemon's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

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


def _uvicorn_config(app: ASGIApp, host: str, port: int, lifespan: str = "on") -> uvicorn.Config:
    """The server settings of the daemon's API (the doctor's WebSocket probe uses them too)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan=lifespan,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=3,
        ws="auto",
        ws_ping_interval=20.0,
    )


WEBSOCKET_FIX = (
    "install a WebSocket library for uvicorn: pip install 'websockets>=13' "
    "(harken depends on it: reinstalling harken brings it)"
)


def websocket_problem() -> str | None:
    """Why uvicorn would refuse WebSocket upgrades (the dashboard's live feed), or None.

    uvicorn serves WebSockets only through an optional library (websockets or wsproto);
    without one it answers every upgrade with a warning, and the dashboard never goes live.
    """
    from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol

    if AutoWebSocketsProtocol is None:
        return "uvicorn finds no WebSocket library (neither websockets nor wsproto is importable)"
    return None


async def _probe_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Accept a WebSocket, send one text message, close."""
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": PROBE_TEXT})
    await send({"type": "websocket.close", "code": 1000})


PROBE_TEXT = "harken"


def probe_websocket(timeout_s: float = 5.0) -> str | None:
    """Serve a WebSocket with the daemon's uvicorn settings on a free loopback port and
    complete a real handshake and one message over a plain socket; the problem, or None."""
    import base64
    import os
    import threading

    problem = websocket_problem()
    if problem:
        return problem
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    host, port = sock.getsockname()[:2]
    server = uvicorn.Server(_uvicorn_config(_probe_app, host, port, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name="websocket-probe")
    thread.start()
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /probe HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                return "the WebSocket probe server did not start"
            time.sleep(0.01)
        with socket.create_connection((host, port), timeout=timeout_s) as client:
            client.sendall(request.encode())
            received = b""
            # An unmasked server text frame: 0x81, the length, the text.
            frame = b"\x81" + bytes([len(PROBE_TEXT)]) + PROBE_TEXT.encode()
            while frame not in received and len(received) < 65536:
                chunk = client.recv(4096)
                if not chunk:
                    break
                received += chunk
        status = received.split(b"\r\n", 1)[0].decode(errors="replace")
        if " 101 " not in f"{status} ":
            return f"a WebSocket upgrade was answered {status or 'with nothing'!r}, not 101"
        if frame not in received:
            return "the WebSocket opened but its first message did not arrive"
        return None
    except OSError as exc:
        return f"WebSocket probe failed: {exc}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
        sock.close()


async def serve(runtime: Runtime, sock: socket.socket | None = None) -> None:
    """Serve until cancelled, then close connections gracefully (a few seconds at most)."""
    sock = sock or listen(runtime.settings.api)
    app = create_app(runtime)
    host, port = sock.getsockname()[:2]
    config = _uvicorn_config(app, host, port)
    problem = websocket_problem()
    if problem:
        # Events, MQTT and webhooks still work: say so loudly, but do not refuse to start.
        log.error("the dashboard cannot go live: %s; fix: %s", problem, WEBSOCKET_FIX)
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
