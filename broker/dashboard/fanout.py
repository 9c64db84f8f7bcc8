"""Live updates to every open page, without letting any page slow the broker down.

Each WebSocket has a bounded queue of already-encoded messages. Putting never waits: a
queue that is full is emptied and marked for a resync, and the page's own task then sends
one fresh snapshot instead of the backlog it missed. So a stuck browser costs one queue's
worth of memory and nothing else; the broker's loop never waits on a socket.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import trio

from .view import LabView, to_json

QUEUE_LIMIT = 64  # pushes per client before it is resynced instead
PUSH_GAP = 0.2  # at most 5 pushes a second, each with everything that changed
EVENTS_PER_PUSH = 500


class ClientQueue:
    def __init__(self, limit: int = QUEUE_LIMIT) -> None:
        self.items: deque[str] = deque()
        self.limit = limit
        self.resync = True  # the first thing a client gets is a snapshot
        self.resyncs = 0
        self._wake = trio.Event()

    def put(self, message: str) -> None:
        if not self.resync:
            if len(self.items) >= self.limit:
                self.items.clear()
                self.resync = True
                self.resyncs += 1
            else:
                self.items.append(message)
        self._wake.set()

    async def next(self) -> str | None:
        """The next message, or None when the client must be sent a snapshot."""
        while not self.resync and not self.items:
            self._wake = trio.Event()
            await self._wake.wait()
        if self.resync:
            self.resync = False
            self.items.clear()
            return None
        return self.items.popleft()


class Fanout:
    """Batches changes and offers each batch, encoded once, to every client's queue.

    A change is pushed at once when things were quiet; after a push, further changes wait
    ``PUSH_GAP`` and go out together as one message: the devices that changed, the leases
    and the queue (if anything changed), and the events since the last push. Pages see
    changes within ``PUSH_GAP``, and fifty pages watching a busy lab cost the broker's loop
    a few sends per page per second.
    """

    def __init__(self, view: LabView) -> None:
        self.view = view
        self.clients: set[ClientQueue] = set()
        self.resyncs = 0
        self._events: list[Any] = []
        self._lab_changed = False
        self._wake = trio.Event()
        view.listeners.append(self._on_change)

    def _on_change(self, what: str, value: Any) -> None:
        if what == "lab":
            self._lab_changed = True
        elif what == "event":
            self._events.append(value)
            if len(self._events) > EVENTS_PER_PUSH:  # a storm: pages resync from the tail
                del self._events[: len(self._events) - EVENTS_PER_PUSH]
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            update: dict[str, Any] = {"type": "update", "events": self._events}
            if self._lab_changed:
                update["lab"] = self.view.take_delta()
            self._events, self._lab_changed = [], False
            if self.clients:
                message = to_json(update)
                for q in self.clients:
                    q.put(message)
            await trio.sleep(PUSH_GAP)

    def add(self) -> ClientQueue:
        q = ClientQueue()
        self.clients.add(q)
        return q

    def remove(self, q: ClientQueue) -> None:
        self.clients.discard(q)
        self.resyncs += q.resyncs
