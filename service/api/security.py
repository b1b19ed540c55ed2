"""Bearer-token checks and the rule that harken never listens beyond loopback without a token."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping
from typing import Any

from fastapi import HTTPException, Request, WebSocket, status

from service.config import ApiConfig

# Browsers cannot set headers on a WebSocket; they can offer subprotocols. The dashboard
# offers ["harken", "bearer.<token>"] and the server answers "harken".
WS_PROTOCOL = "harken"
WS_TOKEN_PREFIX = "bearer."

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def is_loopback(host: str) -> bool:
    """True for loopback addresses and the usual names for them; anything else may be reachable."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def exposure_problem(api: ApiConfig) -> str | None:
    """Why this API config must not start, or None when it is safe."""
    # With ingress on and no token, requests from beyond loopback are answered only when
    # they come from the ingress proxy (AccessGuard), so listening on 0.0.0.0 is safe.
    if api.token is None and not is_loopback(api.host) and not api.ingress.enabled:
        return (
            f"api.host is {api.host!r}, which is reachable beyond this machine, "
            "and no api.token is set; "
            "set api.token (HARKEN_API__TOKEN) to a secret of at least 8 characters, "
            "or listen on 127.0.0.1"
        )
    return None


def token_matches(expected: str, given: str | None) -> bool:
    """Constant-time comparison, so response timing does not leak the token."""
    if given is None:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"}
    )


#: ASGI scope key set by AccessGuard on requests from a trusted ingress proxy: the value is
#: the path prefix the proxy announced (X-Ingress-Path), "" when it sent none.
INGRESS_SCOPE_KEY = "harken.ingress_path"


def via_ingress(scope: Mapping[str, Any]) -> bool:
    """True when the request came from the trusted ingress proxy (authenticated by Home Assistant)."""
    return INGRESS_SCOPE_KEY in scope


class IngressPeers:
    """The ingress proxy's addresses (api.ingress.trusted_proxies), checked against the TCP peer.

    Only the peer address counts: headers such as X-Forwarded-For or X-Ingress-Path can be
    sent by anyone, the source address of the connection cannot be chosen on the hassio network.
    """

    def __init__(self, entries: list[str] | None) -> None:
        self.networks = [ipaddress.ip_network(e, strict=False) for e in entries or []]

    def __bool__(self) -> bool:
        return bool(self.networks)

    def match(self, peer: str | None) -> bool:
        if not peer or not self.networks:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:172.30.32.2 on a dual-stack socket
        return any(address in network for network in self.networks)


def require_token(request: Request) -> None:
    """Dependency of every protected router; does nothing when no token is configured."""
    expected: str | None = request.app.state.token
    if expected is None or via_ingress(request.scope):
        return
    given = bearer(request.headers.get("authorization"))
    if given is None:
        raise unauthorized("missing bearer token: send 'Authorization: Bearer <api.token>'")
    if not token_matches(expected, given):
        raise unauthorized("wrong bearer token")


def websocket_token(websocket: WebSocket) -> str | None:
    """The token a WebSocket client offered: Authorization header, subprotocol or ?token=."""
    header = bearer(websocket.headers.get("authorization"))
    if header:
        return header
    for protocol in websocket.scope.get("subprotocols", []):
        if protocol.startswith(WS_TOKEN_PREFIX):
            return protocol[len(WS_TOKEN_PREFIX) :]
    return websocket.query_params.get("token")


def host_allowed(host_header: str | None) -> bool:
    """Without a token the API answers only to loopback host names (against DNS rebinding)."""
    if not host_header:
        return False
    host = host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    return is_loopback(host)
