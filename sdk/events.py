"""Live events from the broker's XPUB socket, with the journal stitched in front."""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import zmq

from .client import events_address, identity_metadata
from .core import EventFilter
from .errors import Timeout
from .keys import apply as apply_keys

if TYPE_CHECKING:
    from .lab import Lab


class EventStream:
    """A subscription; ``next_event`` waits for the next matching event."""

    def __init__(self, lab: Lab, topic: str = "*") -> None:
        self.lab = lab
        self.pattern = topic
        self.filter = EventFilter(topic)
        addr = events_address(lab.address, lab.hello()["events"])
        self.sock = lab.client.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.METADATA, identity_metadata())  # subscriptions count per identity
        self.sock.setsockopt(zmq.SUBSCRIBE, self.filter.prefix)
        apply_keys(self.sock, lab.client.keys)  # the events XPUB is a CURVE server as the bus is
        self.sock.connect(addr)
        try:
            self._sync()
        except BaseException:  # refused (limit) or never live: no socket left subscribed
            self.sock.close(0)
            raise

    def _sync(self, timeout: float = 5.0) -> None:
        """Wait until the subscription is live (ZeroMQ's slow joiner), so no event that
        happens after this constructor returns can be missed."""
        topic = self.filter.sync_topic
        self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.lab.client.call("sync", token=self.filter.token)
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
            ev = self.filter.accept(self.sock.recv_multipart())
            if ev is not None:
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
        return self.filter.history(self.lab.history(since, self.pattern))

    def iterate(self, since: float | None = None) -> Iterator[dict[str, Any]]:
        if since is not None:
            yield from self.history(since)  # subscribed already, so nothing falls in between
        while True:
            yield self.next_event()
