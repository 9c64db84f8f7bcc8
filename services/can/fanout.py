"""The ``frames`` streams of one can device: each reader's filters and bounded buffer.

Frames are packed once (``labctl.can`` records) and handed to every reader whose filters
match. Each reader has its own buffer of ``reader_buffer`` bytes beyond its stream credit:
a slow reader loses frames only past that, is told how many in-band (a LOST record), and
never holds up the bus or another reader.

Stream args: ``filters`` ([{id, mask, invert?}], SocketCAN semantics: the id carries the
EFF/RTR flag bits), ``errmask`` (error frames of those classes), ``rx`` (False: write
only), ``own`` (False: not the frames this device sent).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import can
import trio

from labctl.can import EFF_FLAG, RTR_FLAG, pack, pack_lost, unpack
from labctl.errors import BadArguments

from ..stream import StreamEnd

#: bytes of frames one stream message carries at most
CHUNK = 60000


class Reader:
    """One ``frames`` stream: its filters and the records waiting for credit."""

    __slots__ = ("filters", "errmask", "own", "records", "size", "limit", "lost", "wake")

    def __init__(
        self, filters: list[tuple[int, int, bool]], errmask: int, own: bool, limit: int
    ) -> None:
        self.filters = filters
        self.errmask = errmask
        self.own = own
        self.records: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.lost = 0  # frames dropped and not yet reported
        self.wake = trio.Event()

    def accepts(self, full_id: int, error: bool, tx: bool) -> bool:
        if tx and not self.own:
            return False
        if error:
            return bool(self.errmask & full_id)
        if not self.filters:
            return True
        for ident, mask, invert in self.filters:
            if ((full_id & mask) == (ident & mask)) != invert:
                return True
        return False

    def add(self, record: bytes) -> None:
        if self.size >= self.limit:
            self.lost += 1
            return
        if self.lost:
            self.records.append(pack_lost(self.lost))
            self.lost = 0
        self.records.append(record)
        self.size += len(record)
        self.wake.set()


class FrameFanout:
    """The readers of one device, and the frames they get."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.readers: set[Reader] = set()

    def deliver(self, batch: list[can.Message], tx: bool) -> None:
        """Frames off the bus (or sent by this device: ``tx``) to every matching reader."""
        readers = self.readers
        if not readers:
            return
        now = time.time()
        for msg in batch:
            full = msg.arbitration_id
            if msg.is_extended_id:
                full |= EFF_FLAG
            if msg.is_remote_frame:
                full |= RTR_FLAG
            record = None
            for reader in readers:
                if reader.accepts(full, msg.is_error_frame, tx):
                    if record is None:
                        record = pack(msg, tx, msg.timestamp if msg.timestamp and not tx else now)
                    reader.add(record)

    async def serve(self, end: StreamEnd, transmit: Callable[[list[can.Message]], None]) -> None:
        """Serve one ``frames`` stream until it ends (see the module docstring for args)."""
        args = end.args or {}
        reader = Reader(_filters(args.get("filters")), _int(args, "errmask"),
                         args.get("own", True) is not False, self.limit)  # fmt: skip
        receive = args.get("rx", True) is not False
        async with trio.open_nursery() as nursery:
            if end.writable:
                nursery.start_soon(self._forward_input, end, transmit, not receive)
            if receive:
                self.readers.add(reader)
                try:
                    await self._forward_output(end, reader)
                finally:
                    self.readers.discard(reader)

    async def _forward_output(self, end: StreamEnd, reader: Reader) -> None:
        while True:
            if not reader.records:
                reader.wake = trio.Event()
                await reader.wake.wait()
                continue
            records, reader.records, reader.size = reader.records, [], 0
            data = b"".join(records)
            for start in range(0, len(data), CHUNK):
                await end.send(data[start : start + CHUNK])

    async def _forward_input(
        self, end: StreamEnd, transmit: Callable[[list[can.Message]], None], only: bool
    ) -> None:
        """Frames the client writes, sent in order; a bad frame closes the stream with why."""
        rest, sent = b"", 0
        while True:
            try:
                data = await end.receive()
            except trio.EndOfChannel:
                break
            buf = rest + data if rest else data
            msgs, used = unpack(buf)
            rest = bytes(buf[used:])
            frames = [m for m in msgs if not isinstance(m, int)]
            if frames:
                transmit(frames)
                sent += len(frames)
        if only:  # a write-only stream ends with its writer; say how many went out
            await end.close("written", result={"tx": sent})


def _int(args: dict[str, Any], key: str) -> int:
    value = args.get(key) or 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadArguments(f"{key} must be an integer, not {value!r}")
    return value


def _filters(raw: Any) -> list[tuple[int, int, bool]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BadArguments("filters must be a list of {id, mask, invert?}")
    out = []
    for f in raw:
        if (
            not isinstance(f, dict)
            or not isinstance(f.get("id"), int)
            or not isinstance(f.get("mask"), int)
        ):
            raise BadArguments(f"bad filter {f!r}: needs integer id and mask")
        out.append((f["id"], f["mask"], bool(f.get("invert"))))
    return out
