"""CAN frames in the SDK: ``lease.can.send(...)``, ``lease.can.frames(filters=...)``.

Frames travel on a device's ``frames`` stream as packed records, many per stream message
(one message per frame would cost a broker hop each). A record is a 14-byte header —
timestamp (float64, taken by the service when the frame came off the bus), arbitration id
(uint32), flags (uint8), data length (uint8) — and then the data. The service applies the
reader's filters (SocketCAN semantics: ``frame_id & mask == id & mask``, the id carrying
the EFF/RTR/ERR flag bits) before anything leaves it.

A reader that falls behind by more than the service's buffer loses frames; it is told so
in-band (a ``LOST`` record where the gap is), and ``FrameStream.lost`` counts them. What a
reader has credit for is never dropped, and a slow reader never stalls another.
"""

from __future__ import annotations

import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Self

from .errors import BadArguments
from .lab import Device

if TYPE_CHECKING:
    import can

HEADER = struct.Struct("<dIBB")
#: record flags
EXTENDED, REMOTE, ERROR, FD, BRS, ESI, TX, LOST = 1, 2, 4, 8, 16, 32, 64, 128
#: SocketCAN's flag bits in a filter id (``can_id`` / ``can_mask`` of struct can_filter)
EFF_FLAG, RTR_FLAG, ERR_FLAG = 0x80000000, 0x40000000, 0x20000000
FD_LENGTHS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64)
#: bytes of records ``send_many`` puts in one stream message
BATCH_BYTES = 60000


def flags_of(msg: can.Message, tx: bool = False) -> int:
    return (
        (EXTENDED if msg.is_extended_id else 0)
        | (REMOTE if msg.is_remote_frame else 0)
        | (ERROR if msg.is_error_frame else 0)
        | (FD if msg.is_fd else 0)
        | (BRS if msg.bitrate_switch else 0)
        | (ESI if msg.error_state_indicator else 0)
        | (TX if tx else 0)
    )


def pack(msg: can.Message, tx: bool = False, timestamp: float | None = None) -> bytes:
    """One record for ``msg``; a remote frame's length is its DLC, it carries no data."""
    data = b"" if msg.is_remote_frame else bytes(msg.data)
    length = msg.dlc if msg.is_remote_frame else len(data)
    ts = msg.timestamp if timestamp is None else timestamp
    return HEADER.pack(ts, msg.arbitration_id, flags_of(msg, tx), length) + data


def pack_lost(count: int) -> bytes:
    return HEADER.pack(time.time(), count, LOST, 0)


#: flag byte -> (extended, remote, error, fd, rx, brs, esi), looked up once per frame
_FLAGS = [
    (bool(f & EXTENDED), bool(f & REMOTE), bool(f & ERROR), bool(f & FD), not f & TX,
     bool(f & BRS), bool(f & ESI))
    for f in range(256)
]  # fmt: skip


def unpack(
    buf: bytes | bytearray | memoryview, channel: str | None = None
) -> tuple[list[Any], int]:
    """Decode whole records from ``buf``: (messages, bytes used). A ``LOST`` record comes
    back as an int (frames lost there); a record cut short stays for the next call."""
    from can import Message

    out: list[Any] = []
    append = out.append
    pos, end, size = 0, len(buf), HEADER.size
    unpack_from = HEADER.unpack_from
    flag_table = _FLAGS
    while end - pos >= size:
        ts, ident, flags, length = unpack_from(buf, pos)
        ext, remote, error, fd, rx, brs, esi = flag_table[flags]
        start = pos + size
        stop = start if remote else start + length
        if stop > end:
            break
        pos = stop
        if flags & LOST:
            append(ident)
            continue
        # positional: twice as fast as keywords, and this runs once per frame
        append(Message(ts, ident, ext, remote, error, channel, length,
                       None if remote else buf[start:stop], fd, rx, brs, esi))  # fmt: skip
    return out, pos


def message(
    id: int,
    data: bytes | Sequence[int] = b"",
    extended: bool | None = None,
    fd: bool = False,
    brs: bool = False,
    remote: bool = False,
    dlc: int | None = None,
) -> can.Message:
    """A checked ``can.Message``; BadArguments says what is wrong (id range, length)."""
    import can

    if isinstance(id, bool) or not isinstance(id, int):
        raise BadArguments(f"a CAN id is an integer, not {id!r}")
    data = bytes(data)
    if extended is None:
        extended = id > 0x7FF
    if not 0 <= id <= (0x1FFFFFFF if extended else 0x7FF):
        raise BadArguments(
            f"CAN id {id:#x} out of range for {'an extended' if extended else 'a standard'} frame"
        )
    if remote and (fd or data):
        raise BadArguments("a remote frame carries no data and cannot be FD")
    if fd and len(data) not in FD_LENGTHS:
        raise BadArguments(f"an FD frame carries one of {FD_LENGTHS} bytes, not {len(data)}")
    if not fd and len(data) > 8:
        raise BadArguments(f"a classic CAN frame carries at most 8 bytes, not {len(data)} (use fd)")
    if brs and not fd:
        raise BadArguments("bit rate switch (brs) needs an FD frame")
    if remote:
        length = 0 if dlc is None else dlc
        if not 0 <= length <= 8:
            raise BadArguments(f"a remote frame's DLC is 0..8, not {length}")
    else:
        length = len(data)
    return can.Message(arbitration_id=id, data=data, is_extended_id=extended, is_fd=fd,
                       bitrate_switch=brs, is_remote_frame=remote, dlc=length)  # fmt: skip


def filters_from_python_can(filters: Iterable[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """python-can's ``[{"can_id", "can_mask", "extended"?}]`` as SocketCAN-style filters."""
    out = []
    for f in filters or ():
        ident, mask = int(f["can_id"]), int(f["can_mask"])
        if "extended" in f:
            mask |= EFF_FLAG
            if f["extended"]:
                ident |= EFF_FLAG
        out.append({"id": ident, "mask": mask})
    return out


class _RecordStream:
    """A device stream carrying packed records: reading chunks until a deadline, closing."""

    stream: Any

    def _read_chunk(self, deadline: float | None) -> bytes | None:
        """The next chunk, or None once ``deadline`` (monotonic) passed or the stream closed."""
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            chunk = self.stream.read_some(remaining)
        except TimeoutError:
            return None
        return chunk or None

    def close(self) -> None:
        self.stream.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class FrameStream(_RecordStream):
    """Frames from a device's ``frames`` stream: ``recv(timeout)``, iteration (sync and
    async), ``send``/``send_many`` when opened with write access (the lease holder)."""

    def __init__(
        self,
        device: Device,
        filters: Iterable[dict[str, Any]] | None = None,
        errmask: int = 0,
        write: bool = False,
        receive: bool = True,
        own: bool = True,
    ) -> None:
        args: dict[str, Any] = {"filters": list(filters or ()), "errmask": errmask}
        if not receive:
            args["rx"] = False
        if not own:
            args["own"] = False
        self.device = device.name
        self.stream = device.stream("frames", write=write, **args)
        self._buf = b""
        self._ready: deque[Any] = deque()
        self.lost = 0  # frames the service dropped because this reader fell behind

    def recv(self, timeout: float | None = None) -> can.Message | None:
        """The next frame, or None after ``timeout`` s or once the stream is closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ready:
            chunk = self._read_chunk(deadline)
            if chunk is None:
                return None
            self._take(chunk)
        return self._ready.popleft()

    def recv_batch(self, timeout: float | None = None) -> list[can.Message]:
        """Every frame that is already here (waiting up to ``timeout`` for the first)."""
        first = self.recv(timeout)
        if first is None:
            return []
        out = [first, *self._ready]
        self._ready.clear()
        return out

    def _take(self, chunk: bytes) -> None:
        buf = self._buf + chunk if self._buf else chunk
        frames, used = unpack(buf, self.device)
        self._buf = bytes(buf[used:])
        for frame in frames:
            if isinstance(frame, int):
                self.lost += frame
            else:
                self._ready.append(frame)

    @property
    def closed_reason(self) -> str | None:
        return self.stream.closed_reason if not self._ready else None

    def send(self, msg: can.Message) -> None:
        self.stream.write(pack(msg, tx=True, timestamp=0.0))

    def send_many(self, msgs: Iterable[can.Message]) -> int:
        """Send frames in as few stream messages as fit; returns how many."""
        batch, n = bytearray(), 0
        for msg in msgs:
            batch += pack(msg, tx=True, timestamp=0.0)
            n += 1
            if len(batch) >= BATCH_BYTES:
                self.stream.write(bytes(batch))
                batch.clear()
        if batch:
            self.stream.write(bytes(batch))
        return n

    def __iter__(self) -> Iterator[can.Message]:
        while True:
            msg = self.recv()
            if msg is None:
                return
            yield msg

    async def __aiter__(self) -> AsyncIterator[can.Message]:
        """Async iteration under trio: each wait for frames runs in a worker thread, at most
        0.1 s, so a cancelled iteration never leaves a thread on the stream's socket."""
        import trio

        while True:
            batch = await trio.to_thread.run_sync(self.recv_batch, 0.1)
            if not batch and self.stream.closed_reason is not None:
                return
            for msg in batch:
                yield msg


class CanDevice(Device):
    """A ``can`` device: the exported methods (``send``, ``send_periodic``, ``state``, ...)
    plus the frame stream as Python objects."""

    def frames(
        self,
        filters: Iterable[dict[str, Any]] | None = None,
        errmask: int = 0,
        write: bool = False,
        **kwargs: Any,
    ) -> FrameStream:
        """Frames on the bus matching ``filters`` (python-can dicts ``can_id``/``can_mask``/
        ``extended``, or SocketCAN-style ``id``/``mask``/``invert``); no filters: all."""
        converted = []
        for f in filters or ():
            converted += filters_from_python_can([f]) if "can_id" in f else [dict(f)]
        return FrameStream(self, converted, errmask, write=write, **kwargs)

    def writer(self) -> FrameStream:
        """A write-only frame stream (needs the lease): ``send_many`` for bursts."""
        return FrameStream(self, write=True, receive=False)

    def isotp_send(self, data: bytes, wait: float = 5.0, **options: Any) -> int:
        """Send one ISO-TP PDU (options: txid, rxid, addressing, stmin, blocksize, padding,
        fd, ...); waits up to ``wait`` s for each flow control frame."""
        return int(self.call("isotp_send", bytes(data), wait=wait, timeout=wait + 10, **options))

    def isotp_recv(self, wait: float = 5.0, **options: Any) -> bytes | None:
        """Receive one ISO-TP PDU within ``wait`` s (None if none came)."""
        return self.call("isotp_recv", wait=wait, timeout=wait + 10, **options)  # type: ignore[no-any-return]

    def isotp(self, write: bool | None = None, **options: Any) -> IsoTpStream:
        """An ISO-TP session as a stream: ``recv`` PDUs, ``send`` them (with the lease).
        ``options``: txid, rxid, addressing, stmin, blocksize, padding, fd, ... as
        ``isotp_send`` takes them. Read-only (no lease) it listens without flow control."""
        return IsoTpStream(self, write, options)


class IsoTpStream(_RecordStream):
    """PDUs of a device's ``isotp`` stream (u32-length records on the wire)."""

    LENGTH = struct.Struct("<I")

    def __init__(self, device: Device, write: bool | None, options: dict[str, Any]) -> None:
        self.stream = device.stream("isotp", write=write, **options)
        self._buf = b""

    def recv(self, timeout: float | None = None) -> bytes | None:
        """The next PDU, or None after ``timeout`` s or once the stream is closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        size = self.LENGTH.size
        while True:
            if len(self._buf) >= size:
                (n,) = self.LENGTH.unpack_from(self._buf)
                if len(self._buf) >= size + n:
                    pdu, self._buf = self._buf[size : size + n], self._buf[size + n :]
                    return pdu
            chunk = self._read_chunk(deadline)
            if chunk is None:
                return None
            self._buf += chunk

    def send(self, pdu: bytes) -> None:
        self.stream.write(self.LENGTH.pack(len(pdu)) + bytes(pdu))
