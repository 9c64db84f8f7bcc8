"""Who is at the other end of each bus connection, and what its role is.

A holder or an audit ``who`` is never taken from call arguments (anyone can type any name);
it is the identity of the connection the call came on, read once per routing id from the
connection's ZMTP metadata:

1. ``User-Id``: set by the ZAP handler when CurveZMQ is on (the key's identity in
   ``authorized_keys``, DESIGN §12);
2. ``X-Labctl-User``: what the SDK declares in its handshake (``ZMQ_METADATA``), its
   ``user@host:pid`` — self-asserted, so only read while CurveZMQ is off;
3. otherwise ``anonymous@<peer address>`` (an older SDK, a raw socket).

The role comes from ``authorized_keys`` by identity at each check (an edited role applies at
once); with CurveZMQ off (open loopback) every peer is ``admin``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import zmq

if TYPE_CHECKING:
    from .auth import AuthorizedKeys as KeyLookup
    from .auth import KeyEntry

#: the property a client declares its identity in (PROTOCOL.md §7)
DECLARED = "X-Labctl-User"
MAX_IDENTITY = 200  # characters; a longer declaration is cut
OPEN_ROLE = "admin"  # every peer's role while CurveZMQ is off
NO_ROLE = "none"  # CurveZMQ on, and the identity is not (any more) in authorized_keys


class Peers:
    """Routing id -> identity, learned from the first frame each connection sends.

    ``keys`` is the broker's authorized keys when CurveZMQ is on, None when open.
    """

    def __init__(self, keys: KeyLookup | None = None) -> None:
        self.known: dict[bytes, str] = {}
        self.keys = keys

    def who(self, frame: Any) -> str:
        """The identity a received frame's connection has ('' if it has no metadata: a
        message libzmq made itself, like an XPUB's unsubscriptions when a peer leaves)."""
        who = _property(frame, "User-Id")
        if not who and self.keys is None:
            who = _property(frame, DECLARED)
        if not who:
            address = _property(frame, "Peer-Address")
            if not address and not _property(frame, "Socket-Type"):
                return ""
            who = f"anonymous@{address}" if address else "anonymous"
        return who[:MAX_IDENTITY]

    def learn(self, ident: bytes, frame: Any) -> str:
        who = self.who(frame) or "anonymous"
        if len(self.known) > 100_000:  # routing ids of gone clients are never reused
            self.known.clear()
        self.known[ident] = who
        return who

    def identity(self, ident: bytes) -> str:
        return self.known.get(ident, "anonymous")

    def forget(self, ident: bytes) -> None:
        self.known.pop(ident, None)

    def entry(self, ident: bytes) -> KeyEntry | None:
        """The authorized key of this connection (None when open, or not authorized)."""
        if self.keys is None:
            return None
        return self.keys.entry(self.identity(ident))

    def role(self, ident: bytes) -> str:
        """``admin`` | ``user`` | ``service`` | ``viewer``; ``admin`` when open, ``none`` for
        an identity no longer in authorized_keys."""
        return role_of(self.keys, self.identity(ident))


def role_of(keys: KeyLookup | None, identity: str) -> str:
    if keys is None:
        return OPEN_ROLE
    entry = keys.entry(identity)
    return entry.role if entry is not None else NO_ROLE


def _property(frame: Any, name: str) -> str:
    try:
        value = frame.get(name)
    except (zmq.ZMQError, AttributeError):  # not set on this connection
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return "".join(ch for ch in str(value) if ch.isprintable()).strip()
