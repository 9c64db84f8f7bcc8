"""The client protocol core both SDKs drive: no sockets, no clocks, no event loop.

``Lab`` (blocking pyzmq) and ``AsyncLab`` (trio) differ only in how they wait. What a
message means — which request it answers, whether it is progress, which typed error it
carries, what a stream's credit, offset and close say and when to resume — is decided
here, once, so the two cannot drift apart.
"""

from __future__ import annotations

import fnmatch
import secrets
from collections import deque
from typing import Any

from . import protocol
from .errors import (
    BadArguments,
    BrokerUnreachable,
    DeviceNotFound,
    DeviceOffline,
    LabError,
    ProtocolError,
    ServiceGone,
    StreamClosed,
    StreamRefused,
    Timeout,
)

WINDOW = 4 << 20  # bytes a reader lets the service send ahead of what it consumed
MAX_WRITE = 65536  # bytes per STREAM-DATA a client sends
PING_AFTER = 1.0  # idle seconds before checking that the broker still knows a stream
RESUME_FOR = 60.0  # how long to keep trying to reopen after the broker went away
#: errors of a re-open worth retrying (the broker or service is coming back)
RETRY_OPEN = (DeviceNotFound, DeviceOffline, ServiceGone, StreamRefused, Timeout)

Outgoing = protocol.Request | protocol.Call | protocol.StreamOpen


# -- requests -------------------------------------------------------------------------------
class Requests:
    """Request ids of one socket (1, 2, 3 ...) and the frames that carry them."""

    __slots__ = ("_next_id",)

    def __init__(self) -> None:
        self._next_id = 0

    def frames(self, msg: Outgoing, timeout: float) -> tuple[int, list[Any]]:
        """Give ``msg`` the next id and ``timeout``; BadArguments if its body is over the
        one-message limit (bulk data belongs in a stream)."""
        self._next_id += 1
        msg.id = self._next_id
        msg.timeout = timeout
        body = msg.body
        if body is not None and len(body) > protocol.MAX_PAYLOAD:
            raise BadArguments(
                f"arguments of {len(body)} bytes exceed the {protocol.MAX_PAYLOAD}-byte "
                "limit of one message; use a stream for bulk data"
            )
        return self._next_id, msg.to_frames()


def settle(msg: protocol.Message, progress: Any = None) -> tuple[bool, Any]:
    """What a message with a request's id means: ``(True, result)`` for the reply;
    ``(False, None)`` for progress (handed to ``progress``); an ERROR raises its typed
    exception, anything else ProtocolError."""
    if msg.mtype == protocol.REPLY:
        interim, value = protocol.reply_parts(msg)
        if not interim:
            return True, value
        if progress is not None:
            progress(value)
        return False, None
    if msg.mtype == protocol.ERROR:
        raise protocol.Error.parse(msg).exception()
    raise ProtocolError(f"unexpected {msg.name} in reply to a request")


def requeue_after(heartbeat: float, wait: float) -> float | None:
    """How long a queued ``lease.acquire`` may hear nothing before it is asked again: the
    broker reminds waiters every heartbeat, so three silent ones mean it restarted and
    forgot the queue (PROTOCOL §8). None when the request does not queue."""
    return 3 * heartbeat + 1.0 if wait > 0 else None


def timeout_error(address: str, msg: Outgoing | None, timeout: float, answered: bool) -> Timeout:
    """BrokerUnreachable if this socket never heard anything, else Timeout naming the call."""
    if not answered:
        return BrokerUnreachable(
            f"no answer from the broker at {address} within {timeout:g}s "
            "(is it running? start one with `labctl broker run` or `labctl lab up`)"
        )
    what = getattr(msg, "method", None) or getattr(msg, "stream", None) or "request"
    dev = getattr(msg, "device", None)
    return Timeout(f"{dev + '.' if dev else ''}{what}: no reply within {timeout:g}s")


# -- streams ----------------------------------------------------------------------------------
class StreamState:
    """One client stream: credit both ways, the absolute offset for resume, the close.

    The SDK that owns it sends what its methods return and feeds it every message that
    arrives; it never blocks.
    """

    def __init__(
        self,
        device: str,
        name: str,
        write: bool,
        lease: str | None,
        args: dict[str, Any],
        resume: float = RESUME_FOR,
        frame: int = MAX_WRITE,
        force: str | None = None,
    ) -> None:
        self.device, self.name, self.want_write, self.lease = device, name, write, lease
        #: the reason a write stream on a device in maintenance is forced (§8), every open
        self.force = force
        self.frame = frame  # bytes per STREAM-DATA we send
        self.args = dict(args)
        self.resume_for = resume
        self.sid: Any = -1
        self.writable = False
        self.offset: int | None = None  # absolute offset of the next byte, if tagged
        self.gaps = 0  # bytes the device dropped before we read them (scrollback overrun)
        self.chunks: deque[bytes] = deque()
        self.credit = 0  # bytes we may write
        self._consumed = 0
        self.closed_reason: str | None = None
        self.pending_resume: str | None = None  # why the stream must be reopened
        self.ended = False  # end of data sent: waiting for the service's verdict
        self.result: Any = protocol.NO_RESULT
        self.error: LabError | None = None

    @property
    def label(self) -> str:
        return f"{self.device}/{self.name}"

    # -- opening and resuming -------------------------------------------------------------
    def open_message(self) -> protocol.StreamOpen:
        """STREAM-OPEN for the first open and every reopen: same ``write``, ``lease`` and
        ``force`` (a forced writer must be forced again, or the reopen is refused)."""
        args = dict(self.args)
        if self.offset is not None:
            args["since"] = self.offset
        force = self.force if self.want_write else None  # a reader needs none (§8)
        return protocol.StreamOpen(None, self.device, self.name, self.want_write, self.lease,
                                   args, WINDOW, force=force)  # fmt: skip

    def opened(self, reply: dict[str, Any]) -> None:
        self.sid = reply["sid"]
        self.writable = bool(reply["writable"])
        self.credit, self._consumed = 0, 0

    def lost(self, why: str, exc: Exception) -> StreamClosed:
        """Giving up on a resume: the stream is closed for good."""
        self.closed_reason = f"lost ({why}) and could not reopen: {exc}"
        return StreamClosed(f"stream {self.label} {self.closed_reason}")

    # -- incoming ---------------------------------------------------------------------------
    def on_message(self, msg: protocol.Message) -> bool:
        """Take one message; False if it is not this stream's (or it is already closed)."""
        if msg.sid != self.sid or self.closed_reason is not None:
            return False
        if msg.mtype == protocol.STREAM_DATA:
            data_msg = protocol.StreamData.parse(msg)
            data = b"".join(bytes(f) for f in data_msg.data)
            off = data_msg.offset
            if off is not None:
                if self.offset is not None and off > self.offset:
                    self.gaps += off - self.offset
                self.offset = off + len(data)
            if data:
                self.chunks.append(data)
        elif msg.mtype == protocol.STREAM_CREDIT:
            credit = protocol.StreamCredit.parse(msg).credit
            if isinstance(credit, int) and credit > 0:
                self.credit += credit
        elif msg.mtype == protocol.STREAM_CLOSE:
            close = protocol.StreamClose.parse(msg)
            resumable = close.unknown or "service went away" in close.reason
            # after end of data the service's upload state is gone with it: no resume
            if resumable and self.resume_for > 0 and not self.ended:
                self.pending_resume = close.reason
            else:
                self.closed_reason = close.reason or "closed"
                self.error, self.result = close.error, close.result
        return True

    def take(self) -> tuple[bytes, list[Any] | None]:
        """The next chunk read, and the credit grant to send for it (if one is due)."""
        data = self.chunks.popleft()
        self._consumed += len(data)
        if self._consumed < WINDOW // 2:
            return data, None
        grant, self._consumed = self._consumed, 0
        return data, protocol.StreamCredit(self.sid, grant).to_frames()

    # -- outgoing ---------------------------------------------------------------------------
    def check_writable(self) -> None:
        if not self.writable:
            raise StreamRefused(f"{self.label} is open read-only (no lease)")
        if self.closed_reason is not None:
            raise self.closed_error()
        if self.ended:
            raise StreamClosed(f"{self.label}: written after finish()")

    def data_frames(self, view: memoryview) -> tuple[list[Any], int]:
        """Frames for as much of ``view`` as credit allows (call only with credit > 0)."""
        n = min(len(view), self.credit, self.frame)
        self.credit -= n
        return protocol.StreamData(self.sid, [view[:n]]).to_frames(), n

    def ping_frames(self) -> list[Any]:
        """STREAM-CREDIT 0: the broker answers only if it does not know the stream."""
        return protocol.StreamCredit(self.sid, 0).to_frames()

    def broker_silent(self, why: str) -> None:
        """The broker did not answer a probe: reopen later if this stream may, else it is
        closed for good (``finish()`` and writes raise StreamClosed with ``why``)."""
        if self.resume_for > 0 and not self.ended:
            self.pending_resume = why
        elif self.closed_reason is None:
            self.closed_reason = why
            self.error = StreamClosed(f"{self.label}: {why}", {"reason": why})

    def end_frames(self) -> list[Any] | None:
        """End of data, once (None if already sent or closed)."""
        if not self.writable:
            raise StreamRefused(f"{self.label} is open read-only (no lease)")
        if self.closed_reason is not None or self.ended:
            return None
        self.ended = True
        return protocol.StreamData(self.sid, [], end=True).to_frames()

    def close_frames(self) -> list[Any] | None:
        """The client's close (None if the stream already closed)."""
        if self.closed_reason is not None:
            return None
        self.closed_reason = "closed by client"
        return protocol.StreamClose(self.sid, "closed by client").to_frames()

    # -- the end ------------------------------------------------------------------------------
    def closed_error(self) -> LabError:
        """What a write or ``finish()`` after the close raises: the service's typed error,
        else StreamClosed with the reason."""
        if self.error is not None and not isinstance(self.error, StreamClosed):
            return self.error
        return StreamClosed(
            f"{self.label} closed: {self.closed_reason}", {"reason": self.closed_reason}
        )

    def verdict(self) -> Any:
        """After the close: the service's result (None if it gave none), or its error."""
        if self.error is not None:
            raise self.closed_error()
        return None if self.result is protocol.NO_RESULT else self.result


# -- events -----------------------------------------------------------------------------------
class EventFilter:
    """One subscription's rules (PROTOCOL §10): what to SUBSCRIBE to, the sync handshake's
    topic, and which events to deliver (matching the glob, each seq once, journal first)."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        cut = min((pattern.find(c) for c in "*?[" if c in pattern), default=len(pattern))
        self.prefix = pattern[:cut].encode()
        self.token = secrets.token_hex(8)
        self.sync_topic = f"sync.{self.token}".encode()
        self.last_seq = 0

    def accept(self, frames: list[Any]) -> dict[str, Any] | None:
        """The event to deliver, or None (unreadable, seen, not matching, a sync event)."""
        try:
            ev = protocol.Published.parse(frames)
        except LabError:
            return None  # not an event we can read: skip it, keep the subscription
        if ev.seq <= self.last_seq or not fnmatch.fnmatchcase(ev.topic, self.pattern):
            return None
        self.last_seq = ev.seq
        return ev.as_dict()

    def history(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Journal rows delivered before live events; live ones up to their seq are skipped."""
        if rows:
            self.last_seq = max(self.last_seq, rows[-1]["seq"])
        return rows
