"""Live events from the broker's XPUB socket, with the journal stitched in front."""

from __future__ import annotations

import fnmatch
import secrets
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import zmq

from . import protocol
from .client import events_address
from .errors import Timeout

if TYPE_CHECKING:
    from .lab import Lab


def _prefix(pattern: str) -> str:
    cut = min((pattern.find(c) for c in "*?[" if c in pattern), default=len(pattern))
    return pattern[:cut]


class EventStream:
    """A subscription; ``next_event`` waits for the next matching event."""

    def __init__(self, lab: Lab, topic: str = "*") -> None:
        self.lab = lab
        self.pattern = topic
        addr = events_address(lab.address, lab.hello()["events"])
        self.sock = lab.client.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, _prefix(topic).encode())
        self.sock.connect(addr)
        self._last_seq = 0
        self._sync()

    def _sync(self, timeout: float = 5.0) -> None:
        """Wait until the subscription is live (ZeroMQ's slow joiner), so no event that
        happens after this constructor returns can be missed."""
        token = secrets.token_hex(8)
        topic = f"sync.{token}".encode()
        self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.lab.client.call("sync", token=token)
                while self.sock.poll(20):
                    if self.sock.recv_multipart()[0] == topic:
                        return
            raise Timeout(f"event subscription did not become live within {timeout}s")
        finally:
            self.sock.setsockopt(zmq.UNSUBSCRIBE, topic)

    def close(self) -> None:
        self.sock.close(0)

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def next_event(self, timeout: float | None = None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if not self.sock.poll(wait):
                raise Timeout(f"no event matching {self.pattern!r} within {timeout}s")
            frames = self.sock.recv_multipart()
            try:
                _topic, meta, body = frames
                ev = protocol.unpack(meta)
                seq, topic = int(ev["seq"]), str(ev["topic"])
                ev["body"] = protocol.unpack(body)
            except Exception:
                continue  # not an event we can read: skip it, keep the subscription
            if seq <= self._last_seq or not fnmatch.fnmatchcase(topic, self.pattern):
                continue
            self._last_seq = seq
            return ev

    def wait_for(self, topic: str, predicate: Any = None, timeout: float = 10.0) -> dict[str, Any]:
        """The next event whose topic matches ``topic`` (glob) and ``predicate(body)``."""
        deadline = time.monotonic() + timeout
        while True:
            ev = self.next_event(max(0.0, deadline - time.monotonic()))
            if fnmatch.fnmatchcase(ev["topic"], topic) and (
                predicate is None or predicate(ev["body"])
            ):
                return ev

    def history(self, since: float) -> list[dict[str, Any]]:
        rows = self.lab.client.call("events", since=since, topic=self.pattern, limit=10000)
        if rows:
            self._last_seq = max(self._last_seq, rows[-1]["seq"])
        return rows  # type: ignore[no-any-return]

    def iterate(self, since: float | None = None) -> Iterator[dict[str, Any]]:
        if since is not None:
            yield from self.history(since)  # subscribed already, so nothing falls in between
        while True:
            yield self.next_event()
