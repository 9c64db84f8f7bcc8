"""A fake pyusb backend with simulated SD-Wires (FTDI FT200XD CBUS bit-bang), for tests.

Reuses the YKUSH fake's descriptor and string plumbing (tests/power/fake_usb.py) and answers
the two FTDI vendor requests the driver sends: SET_BITMODE (0x0B, CBUS mode 0x20, pins
0xF0 DUT / 0xF1 host) and READ_PINS (0x0C). What it cannot prove: the real FTDI's pin
timing, the card reader re-enumerating after a switch, udev naming of the block device.
"""

from __future__ import annotations

import array
import errno
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import usb.core

from ..power.fake_usb import FakeBackend

SDWIRE_VID, SDWIRE_PID = 0x04E8, 0x6001


@dataclass(eq=False)
class FakeSdWire:
    serial: str
    bus: int = 1
    address: int = 7
    pins: int = 0xF0  # at the DUT
    requests: list[tuple[int, int, int]] = field(default_factory=list)
    silent: bool = False
    deny_open: bool = False
    opens: int = 0
    # what FakeBackend's string/descriptor code reads
    pid: int = SDWIRE_PID
    legacy: bool = False


class FakeSdWireBackend(FakeBackend):
    def __init__(self, muxes: list[FakeSdWire]) -> None:
        super().__init__(muxes)  # type: ignore[arg-type]

    def get_device_descriptor(self, dev: Any) -> SimpleNamespace:
        desc = super().get_device_descriptor(dev)
        desc.idVendor, desc.idProduct = SDWIRE_VID, SDWIRE_PID
        desc.port_numbers = (2, 1)  # the FTDI sits on port 1 of the SD-Wire's hub at port 2
        desc.port_number = 1
        return desc

    def ctrl_transfer(self, dev_handle: Any, bm: int, req: int, value: int, index: int,
                      data: Any, t: int) -> int:  # fmt: skip
        if bm & 0x60 != 0x40:  # standard requests (string descriptors): the YKUSH fake's
            return super().ctrl_transfer(dev_handle, bm, req, value, index, data, t)  # type: ignore[no-any-return]
        if dev_handle.silent:
            raise usb.core.USBTimeoutError("Operation timed out", -7, errno.ETIMEDOUT)
        dev_handle.requests.append((bm, req, value))
        if bm == 0x40 and req == 0x0B and value >> 8 == 0x20:
            dev_handle.pins = value & 0xFF
            return 0
        if bm == 0xC0 and req == 0x0C:
            data[:1] = array.array("B", [dev_handle.pins])
            return 1
        raise usb.core.USBError("Pipe error", -9, errno.EPIPE)
