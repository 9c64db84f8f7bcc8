"""The can interface: ``send``, ``send_periodic``, ``stop_periodic``, ``state``, stream ``frames``,
and ISO-TP (``isotp_send``, ``isotp_recv``, stream ``isotp``; see ``isotp.py``).

Everything users call is written once here; a driver only opens its python-can bus
(``open_bus``). Received frames come in through ``bridges.can`` in batches, are stamped
(python-can's receive time, taken in this process), packed once (``labctl.can`` records) and
handed to every reader whose filters match, each with its own bounded buffer: a slow reader
loses frames only beyond what it has credit and buffer for, and is told how many in-band;
it never holds up the bus or another reader. Frames this device sends are looped back to its
own readers, as SocketCAN does for candump.

Mutating: every send, periodic tasks, ISO-TP (it transmits flow control). Reading frames
needs no lease. When a lease ends: every periodic task stops and write streams close.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, ClassVar

import can
import structlog
import trio
from pydantic import Field

from labctl.can import EFF_FLAG, ERROR, RTR_FLAG, message, pack, pack_lost, unpack
from labctl.errors import BadArguments, BadRequest, DeviceOffline, DriverError, NotSupported

from ..bridges.can import CanBridge
from ..driver import Driver, DriverConfig
from ..export import export
from ..stream import StreamEnd
from .isotp import IsoTpOptions, IsoTpSessions

log = structlog.get_logger("can")

#: bytes of frames one stream message carries at most
CHUNK = 60000


class CanConfig(DriverConfig):
    """What every can driver's config has."""

    fd: bool = False  # the bus runs CAN FD (FD frames may be sent)
    bitrate: int | None = Field(None, gt=0)
    data_bitrate: int | None = Field(None, gt=0)
    #: bytes of frames kept per reader beyond its credit before its frames are dropped
    reader_buffer: int = Field(4 << 20, ge=4096)


class _Reader:
    """One ``frames`` stream: its filters and the records waiting for credit."""

    __slots__ = ("filters", "errmask", "own", "records", "size", "limit", "lost", "wake")

    def __init__(self, filters: list[tuple[int, int, bool]], errmask: int, own: bool, limit: int) -> None:
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


class CanDriver(Driver):
    """A CAN bus: frames out and in, periodic sends, ISO-TP."""

    kind = "can"
    Config: ClassVar[type[DriverConfig]] = CanConfig
    config: CanConfig
    streams = {"frames": {"writable": True}, "isotp": {"writable": True}}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bus: can.BusABC | None = None
        self.bridge: CanBridge | None = None
        self.readers: set[_Reader] = set()
        self.periodic: dict[str, can.broadcastmanager.CyclicSendTaskABC] = {}
        self.isotp = IsoTpSessions(self)
        self._task_ids = itertools.count(1)
        self._writers: set[trio.CancelScope] = set()
        self._error = "not open yet"
        self.rx = self.tx = 0

    # -- what a driver implements -------------------------------------------------------
    def open_bus(self) -> can.BusABC:
        """A new python-can bus for this device (raises what python-can raises)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Interface and channel, for ``state``."""
        return {}

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._keep_open)

    async def _keep_open(self) -> None:
        """Open the bus and keep it open: a bus that fails is closed and opened again."""
        delay = 0.5
        while True:
            try:
                self.bus = await trio.to_thread.run_sync(self.open_bus)
                self.bridge = CanBridge(self.bus)
                self._error = ""
                self.ctx.set_online(True)
                self.ctx.publish_status({"bus": "open", **self.describe()})
                delay = 0.5
                await self.bridge.run(self._received)
            except Exception as exc:
                self._error = f"{type(exc).__name__}: {exc}"
                log.warning("CAN bus failed", device=self.name, error=self._error)
                self.ctx.set_online(False, f"CAN bus: {self._error}")
            finally:
                self._shutdown_bus()
            await trio.sleep(delay)
            delay = min(delay * 2, 10)

    def _shutdown_bus(self) -> None:
        bus, self.bus, self.bridge = self.bus, None, None
        for task in self.periodic.values():
            task.stop()
        self.periodic.clear()
        if bus is not None:
            try:
                bus.shutdown()
            except Exception as exc:
                log.warning("CAN bus shutdown failed", device=self.name, error=str(exc))

    async def reset(self) -> None:
        """Stop every periodic task and close the lease's write streams (the bus stays up
        for read-only watchers)."""
        for task in list(self.periodic.values()):
            task.stop()
        self.periodic.clear()
        for scope in list(self._writers):
            scope.cancel()

    async def close(self) -> None:
        self._shutdown_bus()

    # -- frames in and out --------------------------------------------------------------
    def _received(self, batch: list[can.Message], tx: bool = False) -> None:
        """Frames off the bus (or sent by this device: ``tx``), to every matching reader and
        ISO-TP session."""
        if tx:
            self.tx += len(batch)
        else:
            self.rx += len(batch)
        if self.isotp.sessions and not tx:
            self.isotp.received(batch)
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

    def transmit(self, msgs: list[can.Message]) -> None:
        """Send frames now and show them to this device's readers."""
        bridge = self.bridge
        if bridge is None:
            raise DeviceOffline(f"{self.name}: CAN bus not open: {self._error}")
        for msg in msgs:
            if msg.is_fd and not self.config.fd:
                raise BadArguments(f"{self.name}: the bus is not configured for CAN FD (fd: true)")
            try:
                bridge.send(msg)
            except can.CanError as exc:
                raise DriverError(f"{self.name}: send failed: {exc}") from exc
        self._received(msgs, tx=True)

    def transmitted(self, msg: can.Message) -> None:
        """A frame another thread sent on the bus (ISO-TP): show it to the readers."""
        self._received([msg], tx=True)

    # -- the interface ------------------------------------------------------------------
    @export(mutating=True)
    async def send(
        self,
        id: int,
        data: bytes = b"",
        extended: bool | None = None,
        fd: bool = False,
        brs: bool = False,
        remote: bool = False,
        dlc: int | None = None,
    ) -> float:
        """Send one frame (``extended`` None: ids above 0x7FF are extended); returns its time."""
        msg = message(id, _bytes(data), extended, fd, brs, remote, dlc)
        self.transmit([msg])
        await trio.lowlevel.checkpoint()
        return time.time()

    @export(mutating=True)
    async def send_periodic(
        self,
        id: int,
        data: bytes = b"",
        period: float = 0.1,
        duration: float | None = None,
        extended: bool | None = None,
        fd: bool = False,
        brs: bool = False,
    ) -> str:
        """Send a frame every ``period`` s (for ``duration`` s, or until stopped or the lease
        ends); returns the task id for ``stop_periodic``."""
        if not isinstance(period, int | float) or period <= 0:
            raise BadArguments(f"period must be a positive number of seconds, not {period!r}")
        msg = message(id, _bytes(data), extended, fd, brs)
        if msg.is_fd and not self.config.fd:
            raise BadArguments(f"{self.name}: the bus is not configured for CAN FD (fd: true)")
        if self.bus is None:
            raise DeviceOffline(f"{self.name}: CAN bus not open: {self._error}")
        task = self.bus.send_periodic(msg, float(period), duration, store_task=False)
        task_id = f"p{next(self._task_ids)}"
        self.periodic[task_id] = task
        await trio.lowlevel.checkpoint()
        return task_id

    @export(mutating=True)
    async def stop_periodic(self, task: str) -> bool:
        """Stop one periodic task; False if it is not running (stopped, or the lease ended)."""
        found = self.periodic.pop(task, None)
        if found is not None:
            found.stop()
        await trio.lowlevel.checkpoint()
        return found is not None

    @export
    def state(self) -> dict[str, Any]:
        """Bus state (active/passive/bus-off), error counters where the interface has them,
        bit rates, frame counts, readers, periodic tasks."""
        bus = self.bus
        out: dict[str, Any] = {
            "open": bus is not None,
            "error": self._error,
            "bitrate": self.config.bitrate,
            "data_bitrate": self.config.data_bitrate,
            "fd": self.config.fd,
            "rx": self.rx,
            "tx": self.tx,
            "readers": len(self.readers),
            "periodic": sorted(self.periodic),
            "isotp_sessions": len(self.isotp.sessions),
            **self.describe(),
        }
        if bus is not None:
            try:
                out["state"] = bus.state.name.lower()
            except (NotImplementedError, AttributeError):
                out["state"] = "unknown"
            counters = {}
            for name in ("rx_error_counter", "tx_error_counter"):
                value = getattr(bus, name, None)
                if isinstance(value, int):
                    counters[name.split("_")[0]] = value
            out["error_counters"] = counters or None
            if self.bridge is not None:
                out["bridge"] = {"threaded": self.bridge.threaded, "hops": self.bridge.hops,
                                 "frames": self.bridge.frames}  # fmt: skip
        return out

    @export(mutating=True)
    async def isotp_send(
        self,
        data: bytes,
        txid: int | None = None,
        rxid: int | None = None,
        addressing: str = "normal",
        target_address: int | None = None,
        source_address: int | None = None,
        address_extension: int | None = None,
        stmin: int = 0,
        blocksize: int = 8,
        padding: int | None = None,
        fd: bool = False,
        timeout: float = 5.0,
    ) -> int:
        """Send one ISO-TP PDU (waits for the receiver's flow control); returns its length."""
        opts = IsoTpOptions.of(locals())
        await self.isotp.send(opts, _bytes(data))
        return len(data)

    @export(mutating=True)
    async def isotp_recv(
        self,
        txid: int | None = None,
        rxid: int | None = None,
        addressing: str = "normal",
        target_address: int | None = None,
        source_address: int | None = None,
        address_extension: int | None = None,
        stmin: int = 0,
        blocksize: int = 8,
        padding: int | None = None,
        fd: bool = False,
        timeout: float = 5.0,
    ) -> bytes | None:
        """Receive one ISO-TP PDU within ``timeout`` s (None if none came)."""
        opts = IsoTpOptions.of(locals())
        return await self.isotp.recv(opts)

    # -- streams ------------------------------------------------------------------------
    async def open_stream(self, name: str, end: StreamEnd) -> None:
        """``frames``: args ``filters`` ([{id, mask, invert?}], SocketCAN semantics),
        ``errmask``, ``rx`` (False: write only), ``own`` (False: not this device's sends).
        ``isotp``: args are ISO-TP options (see ``IsoTpOptions``); PDUs as u32-length records.
        """
        if name not in self.streams:
            raise BadRequest(f"{self.name}: no stream {name!r}; can devices offer 'frames', 'isotp'")
        scope = trio.CancelScope()  # reset() cancels it to end a lease's writable stream
        try:
            with scope:
                if end.writable:
                    self._writers.add(scope)
                if name == "isotp":
                    await self.isotp.serve(IsoTpOptions.of(end.args or {}), end)
                else:
                    await self._serve_frames(end)
        finally:
            self._writers.discard(scope)
        if scope.cancelled_caught:
            await end.close("the lease on this device ended")

    async def _serve_frames(self, end: StreamEnd) -> None:
        args = end.args or {}
        reader = _Reader(_filters(args.get("filters")), _int(args, "errmask"),
                         args.get("own", True) is not False, self.config.reader_buffer)  # fmt: skip
        receive = args.get("rx", True) is not False
        async with trio.open_nursery() as nursery:
            if end.writable:
                nursery.start_soon(self._forward_input, end, not receive)
            if receive:
                self.readers.add(reader)
                try:
                    await self._forward_output(end, reader)
                finally:
                    self.readers.discard(reader)

    async def _forward_output(self, end: StreamEnd, reader: _Reader) -> None:
        while True:
            if not reader.records:
                reader.wake = trio.Event()
                await reader.wake.wait()
                continue
            records, reader.records, reader.size = reader.records, [], 0
            data = b"".join(records)
            for start in range(0, len(data), CHUNK):
                await end.send(data[start : start + CHUNK])

    async def _forward_input(self, end: StreamEnd, only: bool) -> None:
        """Frames the client writes, sent in order; a bad frame closes the stream with why."""
        rest = b""
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
                self.transmit(frames)
        if only:  # a write-only stream ends with its writer; say how many went out
            await end.close("written", result={"tx": self.tx})


def _bytes(data: Any) -> bytes:
    if isinstance(data, bytes | bytearray):
        return bytes(data)
    if isinstance(data, str):
        try:
            return bytes.fromhex(data)
        except ValueError:
            raise BadArguments(f"data must be bytes or hex, not {data!r}") from None
    if isinstance(data, list | tuple) and all(isinstance(b, int) and 0 <= b < 256 for b in data):
        return bytes(data)
    raise BadArguments(f"data must be bytes, hex or a list of byte values, not {type(data).__name__}")


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
        if not isinstance(f, dict) or not isinstance(f.get("id"), int) or not isinstance(f.get("mask"), int):
            raise BadArguments(f"bad filter {f!r}: needs integer id and mask")
        out.append((f["id"], f["mask"], bool(f.get("invert"))))
    return out


__all__ = ["CanConfig", "CanDriver", "ERROR", "NotSupported"]
