"""The service side of one stream: credit accounting over the bus (see StreamEnd)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import trio

from labctl import protocol
from labctl.errors import DriverError, LabError

WINDOW = 4 << 20  # bytes a service grants a writing client at a time (4 upload frames)
#: output chunks from this size on are sent without a copy when the driver gave bytes
#: (immutable); below it a copy is cheaper than libzmq's release callback
ZERO_COPY = 256 * 1024


class BusStreamEnd:
    """Implements ``services.stream.StreamEnd`` for a stream routed by the broker."""

    def __init__(
        self,
        sid: int,
        args: dict[str, Any],
        writable: bool,
        credit: int,
        send: Callable[[list[Any]], Any],
    ) -> None:
        self.sid = sid
        self.args = args
        self.writable = writable
        self._credit = credit
        self._credit_changed = trio.Event()
        self._send = send  # async callable taking frames
        # unbounded by count: byte credit (WINDOW) already bounds what a client can send
        self._inbox_send, self._inbox = trio.open_memory_channel[bytes](math.inf)
        self._granted_unused = 0
        self.closed = False
        self.scope = trio.CancelScope()
        self.drained = trio.Event()  # set once every byte the client wrote was taken
        self.writer_done = False  # the client sent end of data (it waits for the verdict)

    async def start(self) -> None:
        """Tell the broker the device has the stream (it answers the client then)."""
        await self._send(
            protocol.StreamAccept(self.sid, WINDOW if self.writable else 0).to_frames()
        )

    # -- device -> client ---------------------------------------------------------------
    async def send(self, data: bytes, meta: dict[str, Any] | None = None) -> None:
        if self.closed:
            raise trio.ClosedResourceError("stream closed")
        view = memoryview(data)
        if not view and meta is not None:  # meta alone (e.g. a serial input acknowledgement)
            await self._send(protocol.StreamData(self.sid, [], meta).to_frames(), True)
            return
        while view:
            while self._credit <= 0:
                if self.closed:
                    raise trio.ClosedResourceError("stream closed")
                self._credit_changed = trio.Event()
                await self._credit_changed.wait()
            n = min(len(view), self._credit)
            chunk = view[:n]
            self._credit -= n
            copy = n < ZERO_COPY or not isinstance(data, bytes)
            await self._send(protocol.StreamData(self.sid, [chunk], meta).to_frames(), copy)
            if meta is not None:  # later pieces carry the offset on, not a gap again
                meta = {"offset": meta["offset"] + n} if "offset" in meta else None
            view = view[n:]

    def add_credit(self, n: int) -> None:
        self._credit += n
        self._credit_changed.set()

    # -- client -> device ---------------------------------------------------------------
    def deliver(self, data: bytes | memoryview) -> None:
        """Queue bytes the client wrote (byte credit bounds how much can be queued); big
        chunks come as a memoryview of the received message (no copy)."""
        try:
            self._inbox_send.send_nowait(data)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # the device already ended the stream: the bytes have nowhere to go

    async def receive(self) -> bytes:
        try:
            data = await self._inbox.receive()
        except trio.EndOfChannel:
            self.drained.set()
            raise
        self._granted_unused += len(data)
        if self._granted_unused >= WINDOW // 2:
            n, self._granted_unused = self._granted_unused, 0
            await self._grant(n)
        return data

    async def _grant(self, n: int) -> None:
        await self._send(protocol.StreamCredit(self.sid, n).to_frames())

    # -- ending -------------------------------------------------------------------------
    def end_of_data(self) -> None:
        """The writer sent its last byte (STREAM-DATA ``end``): ``receive()`` raises
        EndOfChannel once the bytes before it are taken; output and close still work."""
        self.writer_done = True
        self._inbox_send.close()

    def remote_closed(self) -> None:
        """The client closed: no more output; input already sent is still delivered."""
        self.closed = True
        self._inbox_send.close()  # receive() sets `drained` when it hits the end
        self._credit_changed.set()

    async def close(self, reason: str = "", *, result: Any = protocol.NO_RESULT) -> None:
        """End the stream; the client's ``finish()`` returns ``result`` (default: None)."""
        await self._close(
            protocol.StreamClose(self.sid, reason or "closed by device", result=result)
        )

    async def fail(self, error: BaseException) -> None:
        """End the stream with a typed error; the client's ``finish()`` raises it."""
        if not isinstance(error, LabError):
            error = DriverError(f"{type(error).__name__}: {error}")
        await self._close(protocol.StreamClose(self.sid, error.message, error=error))

    async def _close(self, message: protocol.StreamClose) -> None:
        if not self.closed:
            self.closed = True
            try:
                frames = message.to_frames()
            except (TypeError, ValueError) as exc:  # a result msgpack cannot carry
                err = DriverError(f"stream result cannot be sent: {exc}")
                frames = protocol.StreamClose(self.sid, err.message, error=err).to_frames()
            await self._send(frames)
        self._inbox_send.close()
        self._credit_changed.set()
