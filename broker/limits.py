"""What one peer may leave in the broker's memory (issue 10: bounded whatever peers do).

Each limit is per routing id; reaching one answers ``limit`` (``LimitExceeded``, details
``{limit, max}``) and changes nothing. Stream credit is capped instead of refused: the broker
passes on at most ``MAX_STREAM_CREDIT`` bytes of credit in flight per direction, so a reader
that grants 2^62 and never reads holds at most that much in the broker and the service.
"""

from __future__ import annotations

from labctl.errors import LimitExceeded

MAX_PENDING = 1000  # requests a client has in flight through the broker
MAX_STREAMS = 256  # stream routes a client has open (or opening)
MAX_WAITERS = 64  # queued lease requests of one client
MAX_DEVICES = 4096  # devices one service registers
MAX_STREAM_CREDIT = 8 << 20  # bytes in flight per stream direction (2x the largest SDK window)


def check(count: int, maximum: int, what: str) -> None:
    """Raise ``LimitExceeded`` if one more ``what`` would pass ``maximum``."""
    if count >= maximum:
        raise LimitExceeded(
            f"too many {what} from this peer (at most {maximum}); finish some first",
            {"limit": what, "max": maximum},
        )
