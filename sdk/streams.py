"""Byte streams in the sync SDK: one socket per stream, credit-based flow control, resume.

A ``ByteStream`` is also the ``Transport`` that ``Console`` (pexpect's API) reads from.
It tracks the absolute offset of the next byte it expects (for serial consoles the
service tags data with offsets), so when the broker restarts underneath it, it opens
the stream again from that offset: nothing is lost or read twice.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import zmq

from . import protocol
from .client import BusClient
from .errors import (
    DeviceNotFound,
    DeviceOffline,
    LabError,
    ServiceGone,
    StreamClosed,
    StreamRefused,
    Timeout,
)

if TYPE_CHECKING:
    from .lab import Lab

WINDOW = 1 << 20  # bytes this reader lets the service send ahead of what it consumed
PING_AFTER = 1.0  # idle seconds before checking that the broker still knows the stream
RESUME_FOR = 60.0  # how long to keep trying to reopen after the broker went away


class ByteStream:
    def __init__(
        self,
        lab: Lab,
        device: str,
        name: str,
        write: bool,
        lease: str | None,
        args: dict[str, Any],
        resume: float = RESUME_FOR,
    ) -> None:
        self.address = lab.address
        self.resume_for = resume
        self.device, self.name, self.want_write, self.lease = device, name, write, lease
        self.args = dict(args)
        self.offset: int | None = None  # absolute offset of the next byte, if the device tags them
        self.gaps = 0  # bytes the device dropped before we read them (scrollback overrun)
        self.closed_reason: str | None = None
        self._chunks: deque[bytes] = deque()
        self._consumed = 0
        self._credit = 0  # bytes we may write
        self._client: BusClient | None = None
        self.sid = -1
        self._open()

    # -- opening and resuming -----------------------------------------------------------
    def _open(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = BusClient(self.address)
        args = dict(self.args)
        if self.offset is not None:
            args["since"] = self.offset
        header = {"device": self.device, "stream": self.name, "write": self.want_write,
                  "lease": self.lease, "args": args, "credit": WINDOW}  # fmt: skip
        self._client.stream_handler = self._on_message
        reply = self._client.request(protocol.STREAM_OPEN, header)
        self.sid = reply["sid"]
        self.writable = reply["writable"]
        self._credit, self._consumed = 0, 0
        self._last_heard = time.monotonic()

    def _resume(self, why: str) -> None:
        deadline = time.monotonic() + self.resume_for
        delay = 0.05
        while True:
            try:
                self._open()
                return
            except (DeviceNotFound, DeviceOffline, ServiceGone, StreamRefused, Timeout) as exc:
                if time.monotonic() >= deadline:
                    raise self._lost(why, exc) from None
            except LabError as exc:  # lease-required, device-busy, ...: retrying cannot help
                raise self._lost(why, exc) from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _lost(self, why: str, exc: Exception) -> StreamClosed:
        self.closed_reason = f"lost ({why}) and could not reopen: {exc}"
        return StreamClosed(f"stream {self.device}/{self.name} {self.closed_reason}")

    # -- incoming -----------------------------------------------------------------------
    def _on_message(self, msg: protocol.Message) -> None:
        h = msg.header
        if h.get("sid") != self.sid or self.closed_reason is not None:
            return  # another stream's, or late traffic after we closed: nothing to resume
        self._last_heard = time.monotonic()
        if msg.mtype == protocol.STREAM_DATA:
            data = b"".join(bytes(f) for f in msg.payload)
            off = h.get("offset")
            if isinstance(off, int):
                if self.offset is not None and off > self.offset:
                    self.gaps += off - self.offset
                self.offset = off + len(data)
            self._chunks.append(data)
        elif msg.mtype == protocol.STREAM_CREDIT:
            self._credit += int(h.get("credit", 0))
        elif msg.mtype == protocol.STREAM_CLOSE:
            resumable = h.get("unknown") or "service went away" in str(h.get("reason", ""))
            if resumable and self.resume_for > 0:
                self._pending_resume = str(h.get("reason"))
            else:
                self.closed_reason = str(h.get("reason", "closed"))

    _pending_resume: str | None = None

    def _pump(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` for one message and handle it (data, credit, close)."""
        assert self._client is not None
        sock = self._client.sock
        wait = PING_AFTER if timeout is None else min(timeout, PING_AFTER)
        if sock.poll(math.ceil(wait * 1000), zmq.POLLIN):
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    self._on_message(protocol.decode(frames))
                except LabError:
                    continue
        elif time.monotonic() - self._last_heard > PING_AFTER:
            # idle: ask the broker whether it still knows this stream (it answers only if not)
            sock.send_multipart(
                protocol.encode(protocol.STREAM_CREDIT, {"sid": self.sid, "credit": 0})
            )
            self._last_heard = time.monotonic()
        if self._pending_resume is not None:
            why, self._pending_resume = self._pending_resume, None
            self._resume(why)

    def _grant(self, n: int) -> None:
        self._consumed += n
        if self._consumed >= WINDOW // 2 and self._client is not None:
            grant, self._consumed = self._consumed, 0
            self._client.sock.send_multipart(
                protocol.encode(protocol.STREAM_CREDIT, {"sid": self.sid, "credit": grant})
            )

    # -- Transport API ------------------------------------------------------------------
    def read_some(self, timeout: float | None = None) -> bytes:
        """Bytes that arrived; b"" once the stream is closed; TimeoutError if none in time."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._chunks:
            if self.closed_reason is not None:
                return b""
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._pump(remaining)  # with 0, takes only what has already arrived
            if not self._chunks and remaining == 0 and self.closed_reason is None:
                raise TimeoutError(f"no data on {self.device}/{self.name} within {timeout}s")
        data = self._chunks.popleft()
        self._grant(len(data))
        return data

    def write(self, data: bytes) -> None:
        if not self.writable:
            raise StreamRefused(f"{self.device}/{self.name} is open read-only (no lease)")
        view = memoryview(data)
        while view:
            if self.closed_reason is not None:
                raise StreamClosed(
                    f"{self.device}/{self.name} closed: {self.closed_reason}",
                    {"reason": self.closed_reason},
                )
            if self._credit <= 0:
                self._pump(1.0)
                continue
            n = min(len(view), self._credit, 65536)
            assert self._client is not None
            self._client.sock.send_multipart(
                protocol.encode(protocol.STREAM_DATA, {"sid": self.sid}, view[:n]), copy=n < 4096
            )
            self._credit -= n
            view = view[n:]

    def close(self) -> None:
        if self._client is None:
            return
        if self.closed_reason is None:
            self._client.sock.send_multipart(
                protocol.encode(
                    protocol.STREAM_CLOSE, {"sid": self.sid, "reason": "closed by client"}
                )
            )
            self.closed_reason = "closed by client"
        self._client.close()
        self._client = None

    def __enter__(self) -> ByteStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self) -> Any:
        while True:
            data = self.read_some(None)
            if not data:
                return
            yield data
