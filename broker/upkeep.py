"""What keeps a flooded broker small and its log readable (issue 10).

``HeapTrim``: after a burst of messages (a flood, big frames) the freed heap goes back to the
system (glibc keeps it otherwise, and the broker's RSS would stay at the burst's peak).
``BadMessageLog``: malformed messages are logged at most once a second, with how many were not.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

log = structlog.get_logger("broker")

TRIM_AFTER = 20_000  # messages handled between two heap trims (at most one per tick)


class HeapTrim:
    def __init__(self) -> None:
        self.handled = 0  # messages since the last trim; the bus loop adds to it

    def tick(self) -> None:
        if self.handled < TRIM_AFTER:
            return
        self.handled = 0
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
