"""Yepkit YKUSH USB hub ports as power outlets, over pyusb (no hidapi, no ykushcmd).

The hub is a HID device (VID 0x04D8, PID 0xF2F7, 0x0042 on early units, 0xF11B YKUSH3)
that takes 64-byte reports on interrupt endpoint 0x01 and answers on 0x81. Commands:
``0x10|port`` up, ``0x00|port`` down, ``0x20|port`` status, ``0x1A``/``0x0A`` all up/down.
Current firmware answers ``[0x01 (ok), state]`` where a state above 0x10 means up; early
firmware echoes the state in byte 0 instead, which the same test (``> 0x10``) reads right.

All three ports of a hub are separate driver instances; they share one opened
``usb.core.Device`` and a lock per hub (module level), because a second handle could not
claim the interface the first one holds. USB I/O is blocking and runs in a worker thread.

The backend is injectable (``backend=`` or the module attribute :data:`BACKEND`) so tests
and the simulated lab can hand in a fake ``usb.backend.IBackend``. What may go wrong: no
libusb, no hub or several hubs without ``serial``, no permission on the device node (udev
rule missing), the hub not answering within ``timeout``; each is a one-line DriverError.
"""

from __future__ import annotations

import contextlib
import errno
import threading
from typing import Any, Literal

import trio
import usb.backend
import usb.core
import usb.util
from pydantic import field_validator

from labctl.errors import DriverError

from ..driver import DriverConfig
from .interface import PowerDriver

VENDOR_ID = 0x04D8
PRODUCT_IDS = (0xF2F7, 0x0042, 0xF11B)
EP_OUT, EP_IN = 0x01, 0x81
REPORT_SIZE = 64
STATUS_OK = 0x01
PORTS = (1, 2, 3)

#: The pyusb backend used when a driver is not given one; None lets pyusb choose libusb.
BACKEND: usb.backend.IBackend | None = None


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


class _Hub:
    """One opened hub; ``transact`` is one command report out and its answer in."""

    def __init__(self, dev: usb.core.Device, serial: str | None) -> None:
        self.dev, self.serial = dev, serial
        self.lock = threading.Lock()
        self.prepared = False

    def transact(self, command: int, timeout_ms: int) -> bytes:
        with self.lock:
            if not self.prepared:
                # Linux binds usbhid to the hub; it must let go before we can claim it.
                with contextlib.suppress(NotImplementedError, usb.core.USBError):
                    if self.dev.is_kernel_driver_active(0):
                        self.dev.detach_kernel_driver(0)
                self.prepared = True
            self.dev.write(EP_OUT, bytes([command]) + bytes(REPORT_SIZE - 1), timeout_ms)
            return bytes(self.dev.read(EP_IN, REPORT_SIZE, timeout_ms))


_HUBS: dict[tuple[int, int, int], _Hub] = {}  # (id(backend), bus, address) -> hub
_HUBS_LOCK = threading.Lock()


def _serial_of(dev: usb.core.Device) -> str | None:
    try:
        return dev.serial_number  # type: ignore[no-any-return]
    except (ValueError, usb.core.USBError):  # no langid / no permission to read strings
        return None


def find_hub(backend: usb.backend.IBackend | None, serial: str | None) -> _Hub:
    """The hub with ``serial`` (or the only hub), opened once per process and reused.

    Raises DriverError when no backend, no match, or several hubs match.
    """
    try:
        found = list(
            usb.core.find(
                find_all=True,
                backend=backend,
                custom_match=lambda d: d.idVendor == VENDOR_ID and d.idProduct in PRODUCT_IDS,
            )
        )
    except usb.core.NoBackendError:
        raise DriverError("no libusb backend for pyusb (install libusb-1.0)") from None
    with _HUBS_LOCK:
        candidates: list[tuple[tuple[int, int, int], _Hub]] = []
        for dev in found:
            key = (id(backend), dev.bus, dev.address)
            candidates.append((key, _HUBS.get(key) or _Hub(dev, _serial_of(dev))))
        chosen = [(k, h) for k, h in candidates if serial is None or h.serial == serial]
        if len(chosen) == 1:
            key, hub = chosen[0]
            hub = _HUBS.setdefault(key, hub)
        for key, other in candidates:  # close what we opened only to read a serial
            if _HUBS.get(key) is not other:
                usb.util.dispose_resources(other.dev)
    if len(chosen) != 1:
        serials = ", ".join(sorted(h.serial or "?" for _, h in candidates)) or "none"
        if not chosen:
            want = f"with serial {serial!r}" if serial else "at all"
            hint = ""
            if any(h.serial is None for _, h in candidates):
                hint = "; serial unreadable: no permission? add a udev rule"
            raise DriverError(f"no YKUSH hub {want} (hubs found: {serials}{hint})")
        raise DriverError(f"{len(chosen)} YKUSH hubs found ({serials}); set 'serial' to choose one")
    return hub


def forget_hub(hub: _Hub) -> None:
    """Drop a hub after an error so the next call finds (and opens) it afresh."""
    with _HUBS_LOCK:
        for key, known in list(_HUBS.items()):
            if known is hub:
                del _HUBS[key]
    with contextlib.suppress(Exception):
        usb.util.dispose_resources(hub.dev)


class YkushPower(PowerDriver):
    """One YKUSH downstream port (or all three) switched over USB HID reports."""

    Config = YkushConfig
    config: YkushConfig

    def __init__(self, *args: Any, backend: usb.backend.IBackend | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.backend = backend if backend is not None else BACKEND
        self._hub: _Hub | None = None  # found on first use, dropped after a USB error

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
        return await trio.to_thread.run_sync(self._transact_sync, command, timeout_ms)

    def _transact_sync(self, command: int, timeout_ms: int) -> bytes:
        hub = self._hub = self._hub or find_hub(self.backend, self.config.serial)
        what = f"{self.name}: YKUSH {hub.serial or '(no serial)'}"
        try:
            answer = hub.transact(command, timeout_ms)
        except usb.core.USBTimeoutError:
            forget_hub(hub)
            self._hub = None
            raise DriverError(
                f"{what} did not answer command 0x{command:02x} within {self.config.timeout}s"
            ) from None
        except usb.core.USBError as exc:
            forget_hub(hub)
            self._hub = None
            if exc.errno == errno.EACCES:
                raise DriverError(f"{what}: permission denied (add a udev rule)") from None
            raise DriverError(f"{what}: USB error: {exc.strerror or exc}") from None
        if len(answer) < 2:
            raise DriverError(f"{what} sent a short answer ({len(answer)} bytes)")
        return answer
