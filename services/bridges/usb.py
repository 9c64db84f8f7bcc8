"""pyusb, bridged into trio: find a device, share its one handle, run transfers in a thread.

pyusb is blocking, so every transfer runs in a trio worker thread (:func:`run`). A device
is opened once per process and shared by every driver instance that uses it (the ports
of one hub, the sides of one mux): a second handle could not claim the interface the
first one holds. :class:`SharedDevice` carries that handle, a lock that serializes
transfers, and the one-time detach of the kernel driver (Linux binds usbhid to HID
devices, which must let go before we can claim them).

The backend is injectable (``backend=`` or the module attribute :data:`BACKEND`), so tests
and the simulated lab can hand in a fake ``usb.backend.IBackend``. What may go wrong: no
libusb, no device, several devices without a serial to choose one, no permission on the
device node (udev rule missing), a device that does not answer; each is a one-line
:class:`~labctl.errors.DriverError` (see :func:`find` and :func:`error`).
"""

from __future__ import annotations

import contextlib
import errno
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import trio
import usb.backend
import usb.core
import usb.util

from labctl.errors import DriverError

T = TypeVar("T")

#: The pyusb backend used when a driver is not given one; None lets pyusb choose libusb.
BACKEND: usb.backend.IBackend | None = None


class SharedDevice:
    """One opened USB device, shared in this process; hold ``lock`` around each transfer."""

    def __init__(self, dev: usb.core.Device, serial: str | None) -> None:
        self.dev, self.serial = dev, serial
        self.lock = threading.Lock()
        self._claimed: set[int] = set()

    def detach_kernel_driver(self, interface: int = 0) -> None:
        """Once per interface: make the kernel's driver (usbhid, ...) let go of it."""
        if interface in self._claimed:
            return
        with contextlib.suppress(NotImplementedError, usb.core.USBError):
            if self.dev.is_kernel_driver_active(interface):
                self.dev.detach_kernel_driver(interface)
        self._claimed.add(interface)


_OPEN: dict[tuple[int, int, int], SharedDevice] = {}  # (id(backend), bus, address) -> device
_OPEN_LOCK = threading.Lock()


def serial_of(dev: usb.core.Device) -> str | None:
    """The device's serial number string, or None when it cannot be read."""
    try:
        return dev.serial_number  # type: ignore[no-any-return]
    except (ValueError, usb.core.USBError):  # no langid / no permission to read strings
        return None


def find(
    what: str,
    match: Callable[[usb.core.Device], bool],
    serial: str | None = None,
    backend: usb.backend.IBackend | None = None,
) -> SharedDevice:
    """The device that ``match``es with ``serial`` (or the only one), opened once and reused.

    ``what`` names the device in errors ("YKUSH hub"). Blocking: call it from a worker
    thread. Raises DriverError when there is no backend, no match, or several matches.
    """
    backend = backend if backend is not None else BACKEND
    try:
        found = list(usb.core.find(find_all=True, backend=backend, custom_match=match))
    except usb.core.NoBackendError:
        raise DriverError("no libusb backend for pyusb (install libusb-1.0)") from None
    with _OPEN_LOCK:
        candidates: list[tuple[tuple[int, int, int], SharedDevice]] = []
        for dev in found:
            key = (id(backend), dev.bus, dev.address)
            candidates.append((key, _OPEN.get(key) or SharedDevice(dev, serial_of(dev))))
        chosen = [(k, d) for k, d in candidates if serial is None or d.serial == serial]
        if len(chosen) == 1:
            key, device = chosen[0]
            device = _OPEN.setdefault(key, device)
        for key, other in candidates:  # close what we opened only to read a serial
            if _OPEN.get(key) is not other:
                usb.util.dispose_resources(other.dev)
    if len(chosen) != 1:
        serials = ", ".join(sorted(d.serial or "?" for _, d in candidates)) or "none"
        if not chosen:
            want = f"with serial {serial!r}" if serial else "at all"
            hint = ""
            if any(d.serial is None for _, d in candidates):
                hint = "; serial unreadable: no permission? add a udev rule"
            raise DriverError(f"no {what} {want} (found: {serials}{hint})")
        raise DriverError(f"{len(chosen)} {what}s found ({serials}); set 'serial' to choose one")
    return device


def forget(device: SharedDevice) -> None:
    """Drop a device after an error, so the next :func:`find` opens it afresh."""
    with _OPEN_LOCK:
        for key, known in list(_OPEN.items()):
            if known is device:
                del _OPEN[key]
    with contextlib.suppress(Exception):
        usb.util.dispose_resources(device.dev)


def forget_all() -> None:
    """Drop every shared device (tests use fresh fake backends)."""
    for device in list(_OPEN.values()):
        forget(device)


def error(what: str, exc: usb.core.USBError, timeout: float | None = None) -> DriverError:
    """A one-line DriverError for a failed transfer: timeout, permission, or what libusb said."""
    if isinstance(exc, usb.core.USBTimeoutError):
        within = f" within {timeout}s" if timeout is not None else ""
        return DriverError(f"{what} did not answer{within}")
    if exc.errno == errno.EACCES:
        return DriverError(f"{what}: permission denied (add a udev rule)")
    return DriverError(f"{what}: USB error: {exc.strerror or exc}")


async def run(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking pyusb work ``fn(*args)`` in a worker thread (cancellation waits for it)."""
    return await trio.to_thread.run_sync(fn, *args)
