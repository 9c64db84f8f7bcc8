"""What one identity may leave in the broker's memory (issues 10 and 15: bounded whatever
peers do).

Each limit is per identity (``peers.Peers``: the CurveZMQ key's, else the SDK's declared
``user@host:pid``, else ``anonymous@<address>``), summed over all its connections, so opening
more sockets buys nothing. Reaching one answers ``limit`` (``LimitExceeded``, details
``{limit, max, identity}``) and changes nothing. Event subscriptions have no request to answer:
one over the limit is not applied (``events.Subscriptions``), and the identity's next ``sync``
call answers ``limit``. Stream credit is capped instead of refused: the broker passes on at most
``MAX_STREAM_CREDIT`` bytes of credit in flight per direction, so a reader that grants 2^62 and
never reads holds at most that much in the broker and the service.
"""

from __future__ import annotations

from labctl.errors import LimitExceeded

MAX_PENDING = 1000  # requests an identity has in flight through the broker
MAX_STREAMS = 1024  # stream routes an identity has open (or opening), over all its sockets
MAX_WAITERS = 64  # queued lease requests of one identity
MAX_DEVICES = 4096  # devices one service registers
MAX_SUBSCRIPTIONS = 1024  # event subscriptions (topic prefixes) of one identity
MAX_SUBSCRIPTIONS_TOTAL = 100_000  # event subscriptions of everyone together
MAX_REFUSED_SUBSCRIPTIONS = 1024  # refused on one connection: then it is cut off (libzmq
#                                   keeps every topic a connection asked for until it closes)
MAX_TOPIC = 1024  # bytes of one subscription (XPUB MAXMSGSIZE: a longer one drops the peer)
MAX_STREAM_CREDIT = 8 << 20  # bytes in flight per stream direction (2x the largest SDK window)


def check(count: int, maximum: int, what: str, identity: str = "") -> None:
    """Raise ``LimitExceeded`` if one more ``what`` would pass ``maximum``."""
    if count >= maximum:
        raise exceeded(what, maximum, identity)


def exceeded(what: str, maximum: int, identity: str = "") -> LimitExceeded:
    by = identity or "this peer"
    return LimitExceeded(
        f"too many {what} from {by} (at most {maximum}); finish some first",
        {"limit": what, "max": maximum, "identity": identity},
    )
