"""ISO-TP (ISO 15765-2) on a can device, through can-isotp.

Each call or stream is one session: a can-isotp ``TransportLayer`` whose receive function
reads a queue this device fills from its own bus reader (no second reader on the bus) and
whose transmit function sends on the device's bus. can-isotp runs its state machine in its
own two threads; trio waits for its blocking ``send``/``recv`` in worker threads.

A session only takes the frames its role needs: ``isotp_send`` takes flow-control frames,
``isotp_recv`` takes single/first/consecutive frames. So a request sent and a response
received on the same ids by two sessions at once (``isotpsend`` then ``isotprecv``, as
can-utils users do) never answer each other's frames. A read-only ``isotp`` stream listens
without sending flow control (can-isotp's listen mode).
"""

from __future__ import annotations

import queue
import struct
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal

import can
import isotp
import trio
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from labctl.errors import BadArguments, DeviceOffline, DriverError, Timeout

from ..bridges.can import thread_send

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from ..stream import StreamEnd
    from .interface import CanDriver

LENGTH = struct.Struct("<I")
MODES = {
    ("normal", False): isotp.AddressingMode.Normal_11bits,
    ("normal", True): isotp.AddressingMode.Normal_29bits,
    ("normal_fixed", True): isotp.AddressingMode.NormalFixed_29bits,
    ("extended", False): isotp.AddressingMode.Extended_11bits,
    ("extended", True): isotp.AddressingMode.Extended_29bits,
    ("mixed", False): isotp.AddressingMode.Mixed_11bits,
    ("mixed", True): isotp.AddressingMode.Mixed_29bits,
}
FLOW_CONTROL = 3  # PCI type of a flow-control frame (0 single, 1 first, 2 consecutive)


class IsoTpOptions(BaseModel):
    """Addressing and timing of one ISO-TP session (can-utils' isotpsend/isotprecv options)."""

    model_config = ConfigDict(extra="forbid")
    txid: int | None = Field(None, ge=0, le=0x1FFFFFFF)
    rxid: int | None = Field(None, ge=0, le=0x1FFFFFFF)
    #: normal, extended, mixed (11 or 29 bit by the ids; ``_29`` forces 29 bit), normal_fixed_29
    addressing: Literal["normal", "normal_29", "extended", "extended_29", "mixed", "mixed_29",
                        "normal_fixed_29"] = "normal"  # fmt: skip
    target_address: int | None = Field(None, ge=0, le=255)  # extended: our tx address byte
    source_address: int | None = Field(None, ge=0, le=255)  # extended: our rx address byte
    address_extension: int | None = Field(None, ge=0, le=255)  # mixed
    stmin: int = Field(0, ge=0, le=255)
    blocksize: int = Field(8, ge=0, le=255)
    padding: int | None = Field(None, ge=0, le=255)
    fd: bool = False
    wait: float = Field(5.0, gt=0)  # seconds to wait for the peer (flow control, a PDU)

    @model_validator(mode="after")
    def _complete(self) -> IsoTpOptions:
        mode = self.addressing.removesuffix("_29")
        if (
            mode in ("normal", "extended", "mixed")
            and (self.txid is None or self.rxid is None)
            and not (mode == "mixed" and self.addressing.endswith("_29"))
        ):
            raise ValueError(f"{self.addressing} addressing needs txid and rxid")
        if mode == "extended" and (self.target_address is None or self.source_address is None):
            raise ValueError("extended addressing needs target_address and source_address")
        if mode == "mixed" and self.address_extension is None:
            raise ValueError("mixed addressing needs address_extension")
        if self.addressing in ("normal_fixed_29", "mixed_29") and (
            self.target_address is None or self.source_address is None
        ):
            raise ValueError(
                f"{self.addressing} addressing needs target_address and source_address"
            )
        return self

    @classmethod
    def of(cls, values: dict[str, Any]) -> IsoTpOptions:
        given = {k: v for k, v in values.items() if k not in ("self", "data") and v is not None}
        try:
            return cls.model_validate(given)
        except ValidationError as exc:
            why = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in exc.errors()
            )
            raise BadArguments(f"ISO-TP options: {why}") from None

    @property
    def prefix(self) -> int:
        """Bytes before the PCI: one address byte with extended and mixed addressing."""
        return 1 if self.addressing.startswith(("extended", "mixed")) else 0

    def address(self) -> isotp.Address:
        ids = [i for i in (self.txid, self.rxid) if i is not None]
        wide = self.addressing.endswith("_29") or any(i > 0x7FF for i in ids)
        mode = MODES[(self.addressing.removesuffix("_29"), wide)]
        kwargs: dict[str, Any] = {"txid": self.txid, "rxid": self.rxid}
        if mode in (isotp.AddressingMode.NormalFixed_29bits, isotp.AddressingMode.Mixed_29bits):
            kwargs = {"target_address": self.target_address, "source_address": self.source_address}
        elif self.addressing.startswith("extended"):
            kwargs.update(target_address=self.target_address, source_address=self.source_address)
        if self.addressing.startswith("mixed"):
            kwargs["address_extension"] = self.address_extension
        try:
            return isotp.Address(mode, **kwargs)
        except ValueError as exc:
            raise BadArguments(f"ISO-TP address: {exc}") from None

    def params(self, listen: bool) -> dict[str, Any]:
        ms = int(self.wait * 1000)
        return {
            "stmin": self.stmin,
            "blocksize": self.blocksize,
            "tx_padding": self.padding,
            "tx_data_length": 64 if self.fd else 8,
            "can_fd": self.fd,
            "max_frame_size": 1 << 20,
            "blocking_send": True,
            "listen_mode": listen,
            "rx_flowcontrol_timeout": ms,
            "rx_consecutive_frame_timeout": ms,
        }


class IsoTpSession:
    """One can-isotp transport layer fed from the device's reader. ``accept``: the PCI types
    (0 single, 1 first, 2 consecutive, 3 flow control) this session takes."""

    def __init__(
        self, driver: CanDriver, opts: IsoTpOptions, accept: set[int], listen: bool
    ) -> None:
        if driver.bus is None:
            raise DeviceOffline(f"{driver.name}: CAN bus not open")
        self.opts = opts
        self.address = opts.address()
        self.accept = accept
        self.frames: queue.Queue[isotp.CanMessage] = queue.Queue()
        self.errors: list[Exception] = []
        send = thread_send(driver.bus, trio.lowlevel.current_trio_token(), driver.transmitted)

        def txfn(m: isotp.CanMessage) -> None:
            send(can.Message(arbitration_id=m.arbitration_id, data=m.data, dlc=m.dlc,
                             is_extended_id=m.is_extended_id, is_fd=m.is_fd,
                             bitrate_switch=m.bitrate_switch))  # fmt: skip

        self.layer = isotp.TransportLayer(
            rxfn=self._rxfn,
            txfn=txfn,
            address=self.address,
            error_handler=self.errors.append,
            params=opts.params(listen),
        )

    def feed(self, msg: can.Message) -> None:
        data = msg.data
        prefix = self.opts.prefix
        if len(data) <= prefix or data[prefix] >> 4 not in self.accept:
            return
        frame = isotp.CanMessage(msg.arbitration_id, msg.dlc, bytes(data), msg.is_extended_id,
                                 msg.is_fd, msg.bitrate_switch)  # fmt: skip
        if self.address.is_for_me(frame):
            self.frames.put_nowait(frame)

    def _rxfn(self, timeout: float) -> isotp.CanMessage | None:
        try:
            return self.frames.get(timeout=timeout)
        except queue.Empty:
            return None

    def failure(self, what: str) -> DriverError:
        why = "; ".join(f"{type(e).__name__}: {e}" for e in self.errors[-3:]) or "no detail"
        return DriverError(f"ISO-TP {what} failed: {why}")


class IsoTpSessions:
    """The ISO-TP sessions open on one device."""

    def __init__(self, driver: CanDriver) -> None:
        self.driver = driver
        self.sessions: set[IsoTpSession] = set()

    def received(self, batch: list[can.Message]) -> None:
        for session in list(self.sessions):
            for msg in batch:
                session.feed(msg)

    @asynccontextmanager
    async def open(
        self, opts: IsoTpOptions, accept: set[int], listen: bool = False
    ) -> AsyncIterator[IsoTpSession]:
        session = IsoTpSession(self.driver, opts, accept, listen)
        await trio.to_thread.run_sync(session.layer.start)
        self.sessions.add(session)
        try:
            yield session
        finally:
            self.sessions.discard(session)
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(session.layer.stop)

    async def send(self, opts: IsoTpOptions, data: bytes) -> None:
        async with self.open(opts, {FLOW_CONTROL}) as session:
            await self._send(session, data)

    async def _send(self, session: IsoTpSession, data: bytes) -> None:
        timeout = session.opts.wait
        try:
            await trio.to_thread.run_sync(
                session.layer.send, data, None, timeout, abandon_on_cancel=True
            )
        except isotp.BlockingSendTimeout:
            raise Timeout(
                f"ISO-TP send of {len(data)} bytes not done within {timeout:g}s"
            ) from None
        except (isotp.BlockingSendFailure, isotp.IsoTpError) as exc:
            session.errors.append(exc)
            raise session.failure(f"send of {len(data)} bytes") from None

    async def recv(self, opts: IsoTpOptions) -> bytes | None:
        async with self.open(opts, {0, 1, 2}) as session:
            pdu = await trio.to_thread.run_sync(
                session.layer.recv, True, opts.wait, abandon_on_cancel=True
            )
        return None if pdu is None else bytes(pdu)

    async def serve(self, opts: IsoTpOptions, end: StreamEnd) -> None:
        """An ``isotp`` stream: received PDUs out, written PDUs sent (u32-length records)."""
        accept = {0, 1, 2, FLOW_CONTROL}
        async with (
            self.open(opts, accept, listen=not end.writable) as session,
            trio.open_nursery() as nursery,
        ):
            if end.writable:
                nursery.start_soon(self._send_written, session, end)
            while True:
                pdu = await trio.to_thread.run_sync(
                    session.layer.recv, True, 0.5, abandon_on_cancel=True
                )
                if pdu is not None:
                    await end.send(LENGTH.pack(len(pdu)) + bytes(pdu))

    async def _send_written(self, session: IsoTpSession, end: StreamEnd) -> None:
        buf = b""
        while True:
            try:
                buf += await end.receive()
            except trio.EndOfChannel:
                return
            while len(buf) >= 4:
                (n,) = LENGTH.unpack_from(buf)
                if len(buf) < 4 + n:
                    break
                pdu, buf = buf[4 : 4 + n], buf[4 + n :]
                await self._send(session, pdu)
