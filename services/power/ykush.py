"""Yepkit YKUSH USB hub ports as power outlets, over pyusb (no hidapi, no ykushcmd).

The hub is a HID device (VID 0x04D8, PID 0xF2F7, 0x0042 on early units, 0xF11B YKUSH3)
that takes 64-byte reports on interrupt endpoint 0x01 and answers on 0x81. Commands:
``0x10|port`` up, ``0x00|port`` down, ``0x20|port`` status, ``0x1A``/``0x0A`` all up/down.
Current firmware answers ``[0x01 (ok), state]`` where a state above 0x10 means up; early
firmware echoes the state in byte 0 instead, which the same test (``> 0x10``) reads right.

All three ports of a hub are separate driver instances; they share one opened device and
its lock through :mod:`labctl.services.bridges.usb`, which also runs the blocking transfers
in a worker thread and finds the hub by serial number.

The backend is injectable (``backend=`` or :data:`labctl.services.bridges.usb.BACKEND`) so
tests and the simulated lab can hand in a fake ``usb.backend.IBackend``. What may go wrong:
no libusb, no hub or several hubs without ``serial``, no permission on the device node (udev
rule missing), the hub not answering within ``timeout``; each is a one-line DriverError.
"""

from __future__ import annotations

from typing import Any, Literal

import usb.backend
import usb.core
from pydantic import field_validator

from labctl.errors import DriverError

from ..bridges import usb as usb_bridge
from ..driver import DriverConfig
from .interface import PowerDriver

VENDOR_ID = 0x04D8
PRODUCT_IDS = (0xF2F7, 0x0042, 0xF11B)
EP_OUT, EP_IN = 0x01, 0x81
REPORT_SIZE = 64
STATUS_OK = 0x01
PORTS = (1, 2, 3)


class YkushConfig(DriverConfig):
    """Which hub (by serial number, optional when there is exactly one) and which port."""

    serial: str | None = None
    port: int | Literal["all"]
    timeout: float = 1.0

    @field_validator("port")
    @classmethod
    def _port(cls, v: int | str) -> int | str:
        if v != "all" and v not in PORTS:
            raise ValueError("port must be 1, 2, 3 or 'all'")
        return v


def _is_ykush(dev: usb.core.Device) -> bool:
    return dev.idVendor == VENDOR_ID and dev.idProduct in PRODUCT_IDS


def _transact(hub: usb_bridge.SharedDevice, command: int, timeout_ms: int) -> bytes:
    """One command report out and its answer in (blocking; runs in a worker thread)."""
    with hub.lock:
        hub.detach_kernel_driver(0)
        hub.dev.write(EP_OUT, bytes([command]) + bytes(REPORT_SIZE - 1), timeout_ms)
        return bytes(hub.dev.read(EP_IN, REPORT_SIZE, timeout_ms))


class YkushPower(PowerDriver):
    """One YKUSH downstream port (or all three) switched over USB HID reports."""

    Config = YkushConfig
    config: YkushConfig

    def __init__(self, *args: Any, backend: usb.backend.IBackend | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.backend = backend if backend is not None else usb_bridge.BACKEND
        # found on first use, dropped after a USB error
        self._hub: usb_bridge.SharedDevice | None = None

    async def set_power(self, on: bool) -> None:
        port = self.config.port
        command = (0x1A if on else 0x0A) if port == "all" else (0x10 if on else 0x00) | port
        answer = await self._transact(command)
        if answer[0] not in (STATUS_OK, command):
            raise DriverError(
                f"{self.name}: YKUSH refused command 0x{command:02x} (answer 0x{answer[0]:02x})"
            )

    async def get_power(self) -> bool:
        """Port up? For ``all``: on only when every port is up."""
        ports = PORTS if self.config.port == "all" else (self.config.port,)
        states = []
        for port in ports:
            assert isinstance(port, int)
            answer = await self._transact(0x20 | port)
            states.append((answer[1] if answer[0] == STATUS_OK else answer[0]) > 0x10)
        return all(states)

    async def _transact(self, command: int) -> bytes:
        timeout_ms = max(1, int(self.config.timeout * 1000))
        return await usb_bridge.run(self._transact_sync, command, timeout_ms)

    def _transact_sync(self, command: int, timeout_ms: int) -> bytes:
        hub = self._hub = self._hub or usb_bridge.find(
            "YKUSH hub", _is_ykush, self.config.serial, self.backend
        )
        what = f"{self.name}: YKUSH {hub.serial or '(no serial)'}"
        try:
            answer = _transact(hub, command, timeout_ms)
        except usb.core.USBError as exc:
            usb_bridge.forget(hub)
            self._hub = None
            if isinstance(exc, usb.core.USBTimeoutError):
                raise DriverError(
                    f"{what} did not answer command 0x{command:02x} within {self.config.timeout}s"
                ) from None
            raise usb_bridge.error(what, exc) from None
        if len(answer) < 2:
            raise DriverError(f"{what} sent a short answer ({len(answer)} bytes)")
        return answer
