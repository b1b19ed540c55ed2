"""Request limits of the API: a body-size cap and a per-client request rate (token bucket).

Both are plain ASGI middleware, so they act before FastAPI reads or parses anything, and
the token bucket itself is pure logic with the time passed in.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Clients remembered by the rate limiter; the least recently seen are forgotten first
#: (a forgotten client starts again with a full bucket, which errs on the side of serving).
MAX_CLIENTS = 4096


async def send_json(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """A complete JSON error response in the API's usual `{"detail": ...}` form."""
    body = json.dumps({"detail": detail}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *(headers or []),
        ],
    })
    await send({"type": "http.response.body", "body": body})


class TokenBuckets:
    """One token bucket per client: `burst` requests at once, then `rate_per_s` sustained."""

    def __init__(self, rate_per_s: float, burst: int, max_clients: int = MAX_CLIENTS) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be positive and burst at least 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at_s)

    def take(self, client: str, now_s: float) -> float:
        """Spend one token of `client`; 0.0 when allowed, else seconds until a token is back."""
        tokens, at_s = self._buckets.pop(client, (float(self.burst), now_s))
        tokens = min(float(self.burst), tokens + max(0.0, now_s - at_s) * self.rate_per_s)
        wait_s = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait_s = (1.0 - tokens) / self.rate_per_s
        self._buckets[client] = (tokens, now_s)  # re-inserted: most recently seen last
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait_s


class RateLimit:
    """429 with Retry-After once a client (by its IP address) exceeds its token bucket.

    The client address is the TCP peer: proxy headers are not trusted, since anyone could
    send them. WebSocket handshakes count as requests and are refused (HTTP 403) when over.
    """

    def __init__(
        self, app: ASGIApp, rate_per_s: float | None, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.app = app
        self.buckets = None if rate_per_s is None else TokenBuckets(rate_per_s, burst)
        self.clock = clock
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.buckets is None or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        wait_s = self.buckets.take(client[0] if client else "unknown", self.clock())
        if wait_s <= 0.0:
            await self.app(scope, receive, send)
            return
        self.refused += 1
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "too many requests"})
            return
        retry_after = str(max(1, math.ceil(wait_s)))
        await send_json(
            send, 429,
            f"too many requests from this client: the limit is {self.buckets.rate_per_s:g} per second "
            f"(bursts of {self.buckets.burst}); retry after {retry_after} s",
            [(b"retry-after", retry_after.encode())],
        )


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """413 for request bodies larger than `max_bytes`, declared or streamed (chunked)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _detail(self) -> str:
        return f"request body too large: at most {self.max_bytes} bytes are accepted"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await send_json(send, 413, self._detail())
            return
        received = 0
        too_large = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if too_large:
                return  # whatever the app makes of the broken read, the answer is our 413
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        with contextlib.suppress(_BodyTooLarge):
            await self.app(scope, limited_receive, guarded_send)
        if too_large and not started:
            await send_json(send, 413, self._detail())
