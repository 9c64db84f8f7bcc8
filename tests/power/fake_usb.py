"""A fake pyusb backend with simulated YKUSH hubs, for tests only.

``FakeBackend`` implements the ``usb.backend.IBackend`` calls pyusb makes for
``usb.core.find``, string descriptors (``usb.util.get_string``, so serial matching runs the
real pyusb code) and interrupt transfers. ``FakeYkush`` answers 64-byte reports like the
hub's current firmware (``[0x01, state]``) or, with ``legacy=True``, like early firmware
that echoes the state in byte 0.

What it cannot prove: real HID timing and report pacing, the kernel's usbhid driver being
detached, device-node permissions and udev rules, hot-plug and re-enumeration, libusb
itself. Those need a real hub.
"""

from __future__ import annotations

import array
import errno
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import usb.backend
import usb.core

YKUSH_VID, YKUSH_PID = 0x04D8, 0xF2F7
STRINGS = {1: "Yepkit Lda.", 2: "YKUSH"}  # index 3 is the serial


@dataclass(eq=False)
class FakeYkush:
    """One hub: three ports, its serial, and switches to make it misbehave."""

    serial: str
    bus: int = 1
    address: int = 5
    pid: int = YKUSH_PID
    ports: list[bool] = field(default_factory=lambda: [False, False, False])
    legacy: bool = False
    silent: bool = False  # reads time out, like a wedged hub
    deny_open: bool = False  # open fails with EACCES, like a missing udev rule
    commands: list[int] = field(default_factory=list)
    opens: int = 0
    _reply: bytes = b""

    def receive(self, report: bytes) -> None:
        """Handle one OUT report; the answer waits for the next IN read."""
        cmd = report[0]
        self.commands.append(cmd)
        port = cmd & 0x0F
        if cmd in (0x1A, 0x0A):
            self.ports = [cmd == 0x1A] * 3
            self._reply = bytes([0x01 if not self.legacy else cmd])
        elif cmd & 0xF0 in (0x00, 0x10) and 1 <= port <= 3:
            self.ports[port - 1] = bool(cmd & 0x10)
            self._reply = bytes([0x01 if not self.legacy else cmd])
        elif cmd & 0xF0 == 0x20 and 1 <= port <= 3:
            state = (0x10 if self.ports[port - 1] else 0x00) | port
            self._reply = bytes([state, 0]) if self.legacy else bytes([0x01, state])
        else:
            self._reply = bytes([0xFF])
        self._reply = self._reply.ljust(64, b"\0")


def _device_descriptor(hub: FakeYkush) -> SimpleNamespace:
    return SimpleNamespace(
        bLength=18, bDescriptorType=1, bcdUSB=0x0200, bDeviceClass=0, bDeviceSubClass=0,
        bDeviceProtocol=0, bMaxPacketSize0=8, idVendor=YKUSH_VID, idProduct=hub.pid,
        bcdDevice=0x0100, iManufacturer=1, iProduct=2, iSerialNumber=3, bNumConfigurations=1,
        address=hub.address, bus=hub.bus, port_number=1, port_numbers=(1,), speed=2,
    )  # fmt: skip


class FakeBackend(usb.backend.IBackend):  # type: ignore[misc]
    """Enough of libusb for pyusb to find, identify and talk to ``FakeYkush`` hubs."""

    def __init__(self, hubs: list[FakeYkush]) -> None:
        self.hubs = hubs

    def enumerate_devices(self) -> Any:
        yield from self.hubs

    def get_device_descriptor(self, dev: FakeYkush) -> SimpleNamespace:
        return _device_descriptor(dev)

    def get_configuration_descriptor(self, dev: FakeYkush, config: int) -> SimpleNamespace:
        return SimpleNamespace(
            bLength=9, bDescriptorType=2, wTotalLength=41, bNumInterfaces=1,
            bConfigurationValue=1, iConfiguration=0, bmAttributes=0x80, bMaxPower=50,
            extra_descriptors=[],
        )  # fmt: skip

    def get_interface_descriptor(
        self, dev: FakeYkush, intf: int, alt: int, config: int
    ) -> SimpleNamespace:
        return SimpleNamespace(
            bLength=9, bDescriptorType=4, bInterfaceNumber=0, bAlternateSetting=0,
            bNumEndpoints=2, bInterfaceClass=3, bInterfaceSubClass=0, bInterfaceProtocol=0,
            iInterface=0, extra_descriptors=[],
        )  # fmt: skip

    def get_endpoint_descriptor(
        self, dev: FakeYkush, ep: int, intf: int, alt: int, config: int
    ) -> SimpleNamespace:
        return SimpleNamespace(
            bLength=7, bDescriptorType=5, bEndpointAddress=(0x81, 0x01)[ep], bmAttributes=3,
            wMaxPacketSize=64, bInterval=1, bRefresh=0, bSynchAddress=0, extra_descriptors=[],
        )  # fmt: skip

    def open_device(self, dev: FakeYkush) -> FakeYkush:
        if dev.deny_open:
            raise usb.core.USBError("Access denied (insufficient permissions)", -3, errno.EACCES)
        dev.opens += 1
        return dev

    def close_device(self, dev_handle: FakeYkush) -> None:
        pass

    def get_configuration(self, dev_handle: FakeYkush) -> int:
        return 1

    def set_configuration(self, dev_handle: FakeYkush, config_value: int) -> None:
        pass

    def set_interface_altsetting(self, dev_handle: FakeYkush, intf: int, alt: int) -> None:
        pass

    def claim_interface(self, dev_handle: FakeYkush, intf: int) -> None:
        pass

    def release_interface(self, dev_handle: FakeYkush, intf: int) -> None:
        pass

    def is_kernel_driver_active(self, dev_handle: FakeYkush, intf: int) -> bool:
        return False

    def intr_write(self, dev_handle: FakeYkush, ep: int, intf: int, data: Any, t: int) -> int:
        dev_handle.receive(bytes(data))
        return len(data)

    def intr_read(self, dev_handle: FakeYkush, ep: int, intf: int, buff: Any, t: int) -> int:
        if dev_handle.silent:
            raise usb.core.USBTimeoutError("Operation timed out", -7, errno.ETIMEDOUT)
        n = min(len(buff), len(dev_handle._reply))
        buff[:n] = array.array("B", dev_handle._reply[:n])
        return n

    def ctrl_transfer(
        self, dev_handle: FakeYkush, bm: int, req: int, value: int, index: int, data: Any, t: int
    ) -> int:
        if bm != 0x80 or req != 6 or value >> 8 != 3:  # only GET_DESCRIPTOR(STRING)
            raise usb.core.USBError("Pipe error", -9, errno.EPIPE)
        idx = value & 0xFF
        if idx == 0:
            desc = bytes([4, 3, 0x09, 0x04])  # LANGID en-US
        else:
            text = {**STRINGS, 3: dev_handle.serial}.get(idx, "").encode("utf-16-le")
            desc = bytes([2 + len(text), 3]) + text
        n = min(len(data), len(desc))
        data[:n] = array.array("B", desc[:n])
        return n
