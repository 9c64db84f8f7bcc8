"""The can interface: ``send``, ``send_periodic``, ``stop_periodic``, ``state``, stream ``frames``,
and ISO-TP (``isotp_send``, ``isotp_recv``, stream ``isotp``; see ``isotp.py``).

Everything users call is written once here; a driver only opens its python-can bus
(``open_bus``). Received frames come in through ``bridges.can`` in batches and go to the
ISO-TP sessions (``isotp.py``) and the frame readers (``fanout.py``). Frames this device
sends are looped back to its own readers, as SocketCAN does for candump.

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

from labctl.can import message
from labctl.errors import BadArguments, BadRequest, DeviceOffline, DriverError

from ..bridges.can import CanBridge
from ..driver import Driver, DriverConfig
from ..export import export
from ..stream import StreamEnd
from .fanout import FrameFanout
from .isotp import IsoTpOptions, IsoTpSessions

log = structlog.get_logger("can")

#: seconds a bus may take to open before the device is reported offline
OPEN_TIMEOUT = 10.0


class CanConfig(DriverConfig):
    """What every can driver's config has."""

    fd: bool = False  # the bus runs CAN FD (FD frames may be sent)
    bitrate: int | None = Field(None, gt=0)
    data_bitrate: int | None = Field(None, gt=0)
    #: bytes of frames kept per reader beyond its credit before its frames are dropped
    reader_buffer: int = Field(4 << 20, ge=4096)


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
        self.fanout = FrameFanout(self.config.reader_buffer)
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
        """Open the bus before the device registers, so it is online only with an open bus;
        a bus that does not open puts the device offline and is retried in the background."""
        first = await self._open()
        nursery.start_soon(self._keep_open, first)

    async def _open(self) -> can.BusABC | None:
        try:
            with trio.fail_after(OPEN_TIMEOUT):
                return await trio.to_thread.run_sync(self.open_bus, abandon_on_cancel=True)
        except trio.TooSlowError:
            self._failed(f"opening the bus took more than {OPEN_TIMEOUT:g}s")
        except Exception as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
        return None

    def _failed(self, error: str) -> None:
        self._error = error
        log.warning("CAN bus failed", device=self.name, error=error)
        self.ctx.set_online(False, f"CAN bus: {error}")

    async def _keep_open(self, bus: can.BusABC | None) -> None:
        """Run the bus; one that fails is closed and opened again, with backoff."""
        delay = 0.5
        while True:
            if bus is not None:
                self.bus, self.bridge = bus, CanBridge(bus)
                self._error = ""
                self.ctx.set_online(True)
                self.ctx.publish_status({"bus": "open", **self.describe()})
                delay = 0.5
                try:
                    await self.bridge.run(self._received)
                except Exception as exc:
                    self._failed(f"{type(exc).__name__}: {exc}")
                finally:
                    self._shutdown_bus()
            await trio.sleep(delay)
            delay = min(delay * 2, 10)
            bus = await self._open()

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
        self.fanout.deliver(batch, tx)

    def transmit(self, msgs: list[can.Message]) -> None:
        """Send frames now and show them to this device's readers."""
        bridge = self.bridge
        if bridge is None:
            raise self._offline()
        for msg in msgs:
            self._check_fd(msg)
            try:
                bridge.send(msg)
            except can.CanError as exc:
                raise DriverError(f"{self.name}: send failed: {exc}") from exc
        self._received(msgs, tx=True)

    def _check_fd(self, msg: can.Message) -> None:
        if msg.is_fd and not self.config.fd:
            raise BadArguments(f"{self.name}: the bus is not configured for CAN FD (fd: true)")

    def _offline(self) -> DeviceOffline:
        return DeviceOffline(f"{self.name}: CAN bus not open: {self._error}")

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
        self._check_fd(msg)
        if self.bus is None:
            raise self._offline()
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
            "readers": len(self.fanout.readers),
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

    # isotp_send and isotp_recv spell out the same ISO-TP options (IsoTpOptions validates
    # them): @export describes a method by its signature, which the CLI, the interface
    # listing and the conformance test read, so **options would hide them.
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
        wait: float = 5.0,
    ) -> int:
        """Send one ISO-TP PDU (waiting up to ``wait`` s for each flow control); returns its length."""
        opts = IsoTpOptions.of(locals())
        payload = _bytes(data)
        await self.isotp.send(opts, payload)
        return len(payload)  # bytes sent, whether ``data`` came as bytes, hex or a list

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
        wait: float = 5.0,
    ) -> bytes | None:
        """Receive one ISO-TP PDU within ``wait`` s (None if none came)."""
        opts = IsoTpOptions.of(locals())
        return await self.isotp.recv(opts)

    # -- streams ------------------------------------------------------------------------
    async def open_stream(self, name: str, end: StreamEnd) -> None:
        """``frames``: args ``filters`` ([{id, mask, invert?}], SocketCAN semantics),
        ``errmask``, ``rx`` (False: write only), ``own`` (False: not this device's sends).
        ``isotp``: args are ISO-TP options (see ``IsoTpOptions``); PDUs as u32-length records.
        """
        if name not in self.streams:
            raise BadRequest(
                f"{self.name}: no stream {name!r}; can devices offer 'frames', 'isotp'"
            )
        scope = trio.CancelScope()  # reset() cancels it to end a lease's writable stream
        try:
            with scope:
                if end.writable:
                    self._writers.add(scope)
                if name == "isotp":
                    await self.isotp.serve(IsoTpOptions.of(end.args or {}), end)
                else:
                    await self.fanout.serve(end, self.transmit)
        finally:
            self._writers.discard(scope)
        if scope.cancelled_caught:
            await end.close("the lease on this device ended")


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
    raise BadArguments(
        f"data must be bytes, hex or a list of byte values, not {type(data).__name__}"
    )
