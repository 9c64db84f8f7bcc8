"""Who is at the other end of each bus connection: the identity leases and the audit use.

A holder or an audit ``who`` is never taken from call arguments (anyone can type any name);
it is the identity of the connection the call came on, read once per routing id from the
connection's ZMTP metadata:

1. ``User-Id``: set by the ZAP handler once CurveZMQ is on (the key's identity, DESIGN §12);
2. ``X-Labctl-User``: what the SDK declares in its handshake (``ZMQ_METADATA``), its
   ``user@host:pid`` — self-asserted until CurveZMQ, but fixed for the connection;
3. otherwise ``anonymous@<peer address>`` (an older SDK).
"""

from __future__ import annotations

from typing import Any

import zmq

#: the property a client declares its identity in (PROTOCOL.md §7)
DECLARED = "X-Labctl-User"
MAX_IDENTITY = 200  # characters; a longer declaration is cut


class Peers:
    """Routing id -> identity, learned from the first frame each connection sends."""

    def __init__(self) -> None:
        self.known: dict[bytes, str] = {}

    def learn(self, ident: bytes, frame: Any) -> str:
        who = _property(frame, "User-Id") or _property(frame, DECLARED)
        if not who:
            address = _property(frame, "Peer-Address")
            who = f"anonymous@{address}" if address else "anonymous"
        who = who[:MAX_IDENTITY]
        if len(self.known) > 100_000:  # routing ids of gone clients are never reused
            self.known.clear()
        self.known[ident] = who
        return who

    def identity(self, ident: bytes) -> str:
        return self.known.get(ident, "anonymous")

    def forget(self, ident: bytes) -> None:
        self.known.pop(ident, None)


def _property(frame: Any, name: str) -> str:
    try:
        value = frame.get(name)
    except (zmq.ZMQError, AttributeError):  # not set on this connection
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return "".join(ch for ch in str(value) if ch.isprintable()).strip()
