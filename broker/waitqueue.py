"""The lease wait queue: requests that could not be served at once, in fair FIFO order.

On each change the queue is walked front to back and each waiter takes the first free group
it matches, so an earlier request always gets first pick. Waiters hear their position at
once, whenever requests leave the queue, and every heartbeat as a reminder: a client that
hears nothing knows the broker restarted and forgot it (queued requests are not persisted,
PROTOCOL.md §8).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from labctl import protocol
from labctl.errors import LabError, WaitTimeout

if TYPE_CHECKING:
    from .leases import Lease
    from .outbox import Outbox


@dataclass(slots=True)
class Waiter:
    ident: bytes
    rid: Any
    selector: str
    duration: float
    holder: str
    deadline: float
    grace: float
    queued_at: float = field(default_factory=time.time)
    #: asked not to wait: queued only while a matching group's reset settles (then it is
    #: granted, or told the group is busy, at once)
    settling: bool = False


class WaitQueue:
    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.waiters: list[Waiter] = []
        self._queued_count = 0

    def __len__(self) -> int:
        return len(self.waiters)

    def add(self, waiter: Waiter) -> None:
        self.waiters.append(waiter)
        position = len(self.waiters)
        self._progress(waiter, position)
        self._queued_count += 1  # requests have no lease id yet: a broker-wide number
        self.outbox.publish(
            f"lease.q{self._queued_count}.queued",
            {"selector": waiter.selector, "position": position, "holder": waiter.holder},
        )

    def serve(self, try_grant: Callable[[Waiter], Lease | None]) -> list[tuple[Waiter, Lease]]:
        """One FIFO pass: waiters past their wait are told so and leave; each other one tries
        ``try_grant``. Returns who got which lease (the caller tells them)."""
        if not self.waiters:
            return []
        still: list[Waiter] = []
        granted: list[tuple[Waiter, Lease]] = []
        now = time.time()
        for w in self.waiters:
            if w.deadline <= now:
                self._expire(w)
                continue
            try:
                lease = try_grant(w)
            except LabError as err:  # no longer worth waiting for (see Waiter.settling)
                self.outbox.send(w.ident, protocol.Error.of(err, w.rid).to_frames())
                continue
            if lease is None:
                still.append(w)
            else:
                granted.append((w, lease))
        changed = len(still) != len(self.waiters)
        self.waiters = still
        if changed:
            self.remind()
        return granted

    def remind(self) -> None:
        """Tell every waiter its position (each heartbeat, and after the queue moved)."""
        for i, w in enumerate(self.waiters, 1):
            self._progress(w, i)

    def expired(self, now: float) -> bool:
        return any(w.deadline <= now for w in self.waiters)

    def next_deadline(self) -> float:
        return min((w.deadline for w in self.waiters), default=float("inf"))

    def listing(self) -> list[dict[str, Any]]:
        return [
            {"position": i, "selector": w.selector, "holder": w.holder, "since": w.queued_at}
            for i, w in enumerate(self.waiters, 1)
        ]

    def _progress(self, w: Waiter, position: int) -> None:
        reply = protocol.Reply(w.rid, {"position": position}, progress=True)
        if not self.outbox.send(w.ident, reply.to_frames()):
            w.deadline = 0  # the requester is gone; drop it on the next pass

    def _expire(self, w: Waiter) -> None:
        if w.deadline == 0:
            return
        waited = time.time() - w.queued_at
        err = WaitTimeout(f"no group matching {w.selector!r} became free within {waited:.1f}s")
        self.outbox.send(w.ident, protocol.Error.of(err, w.rid).to_frames())
