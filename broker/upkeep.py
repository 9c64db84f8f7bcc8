"""What keeps a flooded broker small and its log readable (issue 10).

``HeapTrim``: after a burst of messages (a flood, big frames) the freed heap goes back to the
system (glibc keeps it otherwise, and the broker's RSS would stay at the burst's peak).
``BadMessageLog``: malformed messages are logged at most once a second, with how many were not.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import structlog

log = structlog.get_logger("broker")

TRIM_AFTER = 20_000  # messages handled between two heap trims (at most one per tick)


class HeapTrim:
    """Trims after ``TRIM_AFTER`` messages, and again once the burst is over: on its first
    quiet tick and on the ``SETTLED``-th, when its peers' sessions have timed out (liveness)
    and what they left behind is freed."""

    SETTLED = 4  # quiet ticks after a burst for its last trim (liveness is 3 heartbeats)

    def __init__(self) -> None:
        self.handled = 0  # messages since the last trim; the bus loop adds to it
        self._seen = 0  # ``handled`` at the last tick
        self._quiet: int | None = None  # quiet ticks since a burst (None: no burst)

    def tick(self) -> None:
        new, self._seen = self.handled - self._seen, self.handled
        if self.handled >= TRIM_AFTER:
            self._quiet = 0
        elif self._quiet is None:
            return
        elif new > TRIM_AFTER // 10:  # busy again: the burst goes on
            self._quiet = 0
            return
        else:
            self._quiet += 1
            if self._quiet not in (1, self.SETTLED):
                return
            if self._quiet == self.SETTLED:
                self._quiet = None  # the burst's last trim, after a full collection: what
                gc.collect()  # the burst left in cycles (errors and their tracebacks) goes
        self.handled = self._seen = 0
        trim_heap()


def trim_heap() -> None:
    """Give freed heap back to the system (glibc's malloc_trim; nothing elsewhere)."""
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to trim


class BadMessageLog:
    def __init__(self) -> None:
        self._at = 0.0
        self._quiet = 0

    def warn(self, ident: bytes, error: str) -> None:
        now = time.monotonic()
        if now - self._at < 1.0:
            self._quiet += 1
            return
        log.warning("bad message", peer=ident.hex()[:40], error=error[:200], not_logged=self._quiet)
        self._at, self._quiet = now, 0


def _libc() -> Any:
    import ctypes

    return ctypes.CDLL(None)
