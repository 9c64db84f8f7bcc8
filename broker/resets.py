"""Resets after a lease ends, and their answers (PROTOCOL.md §8 "End").

The broker sends each device whose lease ended a ``__reset__`` REQUEST with an id of its own
(``reset-<n>``, a string, so it never meets a client request's broker id); the service runs
the driver's ``reset()`` and answers. An ERROR means the reset failed (the outlet may still be
on): the lease table marks the device ``bad`` with the reason, journaled, and it is not
allocated until an admin clears it. While a reset is unanswered the device is ``resetting``
and not allocated either, so the next holder never gets a board whose reset may yet fail.
A service that never answers (older than this rule, or hung) holds it back only until the
deadline; a service that goes away releases it at once (it comes back offline anyway).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from labctl import protocol
from labctl.protocol import Message

if TYPE_CHECKING:
    from .outbox import Outbox
    from .registry import Device

log = structlog.get_logger("resets")

RESET_TIMEOUT = 60.0  # seconds a driver's reset may take before the broker stops waiting


@dataclass(slots=True)
class PendingReset:
    device: str
    service: bytes
    deadline: float


class Resets:
    def __init__(
        self, outbox: Outbox, failed: Callable[[str, str], None], settled: Callable[[], None]
    ) -> None:
        self.outbox = outbox
        self.failed = failed  # (device name, reason): what a failed reset does
        self.settled = settled  # a device may be allocatable again: serve the queue
        self.pending: dict[str, PendingReset] = {}
        self._n = 0

    def resetting(self, name: str) -> bool:
        """Whether ``name`` has a reset that has not been answered yet."""
        return any(e.device == name for e in self.pending.values())

    def seconds_left(self, name: str) -> float:
        """How long the broker may still wait for ``name``'s reset answer (0 if none pends)."""
        now = time.monotonic()
        return max((e.deadline - now for e in self.pending.values() if e.device == name), default=0)

    def send(self, dev: Device) -> None:
        self._n += 1
        rid = f"reset-{self._n}"
        reset = protocol.Request.call(dev.name, "__reset__")  # body [[], {}]
        reset.id, reset.timeout = rid, RESET_TIMEOUT
        if self.outbox.send(dev.ident, reset.to_frames()):
            self.pending[rid] = PendingReset(dev.name, dev.ident, time.monotonic() + RESET_TIMEOUT)

    def answered(self, ident: bytes, msg: Message) -> bool:
        """A REPLY/ERROR with a reset's id: True if it was one (whatever it said)."""
        rid = msg.id
        entry = self.pending.get(rid) if isinstance(rid, str) else None
        if entry is None or entry.service != ident:
            return False
        del self.pending[rid]
        if msg.mtype == protocol.ERROR:
            err = protocol.Error.parse(msg)
            log.error("reset failed", device=entry.device, code=err.code, error=err.message)
            self.failed(entry.device, f"reset failed: {err.message}")
        self.settled()
        return True

    def forget_expired(self, now: float) -> None:
        expired = [rid for rid, entry in self.pending.items() if entry.deadline < now]
        for rid in expired:
            log.warning("reset not answered", device=self.pending.pop(rid).device)
        if expired:
            self.settled()

    def service_lost(self, ident: bytes) -> None:
        lost = [r for r, e in self.pending.items() if e.service == ident]
        for rid in lost:
            del self.pending[rid]
        if lost:
            self.settled()
