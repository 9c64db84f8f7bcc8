"""Who is at the other end of each bus connection, and what its role is.

A holder or an audit ``who`` is never taken from call arguments (anyone can type any name);
it is the identity of the connection the call came on, read from the connection's ZMTP
metadata once per routing id (and, with CurveZMQ on, checked on every message: a routing id
a gone peer had may come back on another connection):

1. ``User-Id``: set by the ZAP handler when CurveZMQ is on: the connection's public key,
   whose entry in ``authorized_keys`` gives the identity and role (DESIGN §12);
2. ``X-Labctl-User``: what the SDK declares in its handshake (``ZMQ_METADATA``), its
   ``user@host:pid`` — self-asserted, so only read while CurveZMQ is off;
3. otherwise ``anonymous@<peer address>`` (an older SDK, a raw socket).

The role comes from ``authorized_keys`` by the connection's key at each check (an edited role
applies at once; a removed key acts no more); with CurveZMQ off (open loopback) every peer is
``admin``.
"""

from __future__ import annotations

from collections.abc import Callable
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
        self.known: dict[bytes, str] = {}  # routing id -> identity
        self.key_of: dict[bytes, str] = {}  # routing id -> its connection's key (CurveZMQ)
        self.keys = keys
        #: called with (routing id, why) when a routing id turns out to be another
        #: connection's: whatever the broker kept for the old one must go
        self.replaced: Callable[[bytes, str], None] | None = None

    def who(self, frame: Any) -> str:
        """The identity a received frame's connection has ('' if it has no metadata: a
        message libzmq made itself, like an XPUB's unsubscriptions when a peer leaves)."""
        if self.keys is not None:
            key = _property(frame, "User-Id")
            if key:
                entry = self.keys.for_key(key)
                return entry.identity if entry is not None else f"removed-key:{key[:8]}"
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
        if self.keys is not None:
            key = _property(frame, "User-Id")
            if ident in self.key_of and self.key_of[ident] != key and self.replaced:
                self.replaced(ident, "its routing id came back on another connection")
            if len(self.key_of) > 100_000:
                self.key_of.clear()
            self.key_of[ident] = key
        if len(self.known) > 100_000:  # routing ids of gone clients are never reused
            self.known.clear()
        self.known[ident] = who
        return who

    def changed(self, ident: bytes, frame: Any) -> bool:
        """CurveZMQ: did this message come on another connection than the routing id's
        first (a peer may set its own routing id)? One property read per message."""
        try:
            return frame.get("User-Id") != self.key_of.get(ident)
        except zmq.ZMQError:
            return True

    def identity(self, ident: bytes) -> str:
        return self.known.get(ident, "anonymous")

    def forget(self, ident: bytes) -> None:
        self.known.pop(ident, None)
        self.key_of.pop(ident, None)

    def entry(self, ident: bytes) -> KeyEntry | None:
        """The authorized key of this connection (None when open, or when its key is no
        longer in authorized_keys, or now names another identity)."""
        if self.keys is None:
            return None
        entry = self.keys.for_key(self.key_of.get(ident, ""))
        return entry if entry is not None and entry.identity == self.known.get(ident) else None

    def role(self, ident: bytes) -> str:
        """``admin`` | ``user`` | ``service`` | ``viewer``; ``admin`` when open, ``none`` for
        a connection whose key is no longer in authorized_keys."""
        if self.keys is None:
            return OPEN_ROLE
        entry = self.entry(ident)
        return entry.role if entry is not None else NO_ROLE

    def revoked(self) -> list[bytes]:
        """Routing ids whose key is no longer authorized (after a reload)."""
        return [ident for ident in self.key_of if self.entry(ident) is None]


def _property(frame: Any, name: str) -> str:
    try:
        value = frame.get(name)
    except (zmq.ZMQError, AttributeError):  # not set on this connection
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return "".join(ch for ch in str(value) if ch.isprintable()).strip()
