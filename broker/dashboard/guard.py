"""Requests from other web sites are turned away (an ASGI middleware around the app).

The dashboard is read-only, but it shows consoles and the lab: a page from another site,
open in a browser that can reach the dashboard, must not read them. Two checks:

- **Host**: a dashboard bound to loopback answers only to loopback host names, so a DNS
  name rebound to 127.0.0.1 by a hostile site gets 403 (DNS rebinding).
- **Origin**: a WebSocket a browser opens carries the page's origin; it must be this
  dashboard's own (same host and port as the request). Tools without a browser send none.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from labctl.broker.auth import is_loopback_host

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def _host_name(host_port: str) -> str:
    """``HOST:PORT`` or ``[V6]:PORT`` -> the host (lower case, brackets kept for v6)."""
    host_port = host_port.strip().lower()
    if host_port.startswith("["):
        return host_port[: host_port.find("]") + 1]
    return host_port.rsplit(":", 1)[0] if host_port.count(":") == 1 else host_port


class SameOrigin:
    """Wraps an ASGI app: 403 for a wrong Host (loopback binds) or a foreign Origin."""

    def __init__(self, app: Any, loopback: bool) -> None:
        self.app = app
        self.loopback = loopback  # the dashboard binds loopback: loopback Host names only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            why = self.refused(dict(scope.get("headers") or ()), scope["type"])
            if why is not None:
                await _refuse(scope, receive, send, why)
                return
        await self.app(scope, receive, send)

    def refused(self, headers: dict[bytes, bytes], kind: str) -> str | None:
        host = headers.get(b"host", b"").decode("latin-1")
        if self.loopback and not is_loopback_host(_host_name(host)):
            return f"host {host!r} is not this dashboard's (it serves loopback)"
        origin = headers.get(b"origin")
        if kind == "websocket" and origin is not None:
            seen = urlsplit(origin.decode("latin-1"))
            if seen.netloc.lower() != host.lower():
                return f"origin {seen.netloc!r} is another site's"
        return None


async def _refuse(scope: Scope, receive: Receive, send: Send, why: str) -> None:
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.close", "code": 1008, "reason": why})
        return
    body = f"forbidden: {why}\n".encode()
    await send({"type": "http.response.start", "status": 403,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})
