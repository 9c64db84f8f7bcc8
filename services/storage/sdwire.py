"""The Tizen/Badgerd SD-Wire over pyusb: an FTDI FT200XD whose CBUS pins switch the card.

The mux is switched with FTDI's SET_BITMODE vendor request (0x0B) in CBUS bit-bang mode:
``wValue = (0x20 << 8) | target`` with target 0xF0 (DUT) or 0xF1 (host); READ_PINS (0x0C)
reads the side back (bit 0: 1 = host). Once at the host, the card appears as a USB mass
storage block device behind the same SD-Wire hub: found in sysfs next to the FTDI (or
given as ``storage_device``), and waited for up to ``storage_timeout`` seconds.

The SD-Wire has no "off": ``off`` (and the reset at lease end) parks the card at the DUT
side, where the host cannot touch it; ``state`` then reads ``dut``.

What may go wrong: no libusb, no SD-Wire or several without ``serial``, no permission on
the device node (udev rule), no medium within ``storage_timeout``; each is one line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import trio
import usb.backend
import usb.core

from labctl.errors import DriverError

from ..bridges import usb as usb_bridge
from .interface import ByteSize, StorageConfig, StorageDriver

VENDOR_ID, PRODUCT_ID = 0x04E8, 0x6001  # what sd-mux-ctrl programs into the FT200XD
SET_BITMODE, READ_PINS = 0x0B, 0x0C
BITMODE_CBUS = 0x20
TARGET = {"dut": 0xF0, "host": 0xF1}
OUT, IN = 0x40, 0xC0  # vendor request, host-to-device / device-to-host
FTDI_INDEX = 1


class SdWireConfig(StorageConfig):
    serial: str | None = None
    #: the card's block device; found in sysfs next to the SD-Wire when not given
    storage_device: str | None = None
    #: how long to wait for the medium after switching to the host
    storage_timeout: float = 10.0
    #: sysfs root (tests point it at a fake tree)
    sysfs: str = "/sys"
    usb_timeout: float = 1.0
    #: bound dirty data on a real card: fdatasync every so often
    sync_every: ByteSize = 64 << 20


def _is_sdwire(dev: usb.core.Device) -> bool:
    return dev.idVendor == VENDOR_ID and dev.idProduct == PRODUCT_ID


class SdWireStorage(StorageDriver):
    Config = SdWireConfig
    config: SdWireConfig

    def __init__(self, *args: Any, backend: usb.backend.IBackend | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.backend = backend if backend is not None else usb_bridge.BACKEND
        self._dev: usb_bridge.SharedDevice | None = None

    async def select(self, side: str) -> None:
        target = TARGET["host" if side == "host" else "dut"]  # no "off": park at the DUT
        await usb_bridge.run(self._ctrl, OUT, SET_BITMODE, (BITMODE_CBUS << 8) | target, 0)

    async def current_side(self) -> str:
        pins = await usb_bridge.run(self._ctrl, IN, READ_PINS, 0, 1)
        return "host" if pins[0] & 0x01 else "dut"

    async def target_path(self) -> str:
        """The block device once the medium is there: polls sysfs/the node up to
        ``storage_timeout`` (a card reader needs a moment to enumerate)."""
        deadline = trio.current_time() + self.config.storage_timeout
        delay = 0.02
        while True:
            path = await trio.to_thread.run_sync(self._medium)
            if path is not None:
                return path
            if trio.current_time() >= deadline:
                where = self.config.storage_device or "a block device next to the SD-Wire"
                raise DriverError(
                    f"{self.name}: no medium at the host within {self.config.storage_timeout:g}s "
                    f"(looked for {where}); is a card inserted?"
                )
            await trio.sleep(delay)
            delay = min(delay * 2, 0.25)

    def _medium(self) -> str | None:
        path = self.config.storage_device or self._find_block_device()
        if path is None:
            return None
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            return path if os.lseek(fd, 0, os.SEEK_END) > 0 else None
        finally:
            os.close(fd)

    def _find_block_device(self) -> str | None:
        """A block device whose sysfs path runs through the SD-Wire's hub port."""
        dev = self._device().dev
        ports = getattr(dev, "port_numbers", None) or ()
        if not ports:
            return None
        hub = f"{dev.bus}-" + ".".join(str(p) for p in ports[:-1])  # the SD-Wire's own hub
        block = Path(self.config.sysfs) / "block"
        try:
            entries = sorted(block.iterdir())
        except OSError:
            return None
        for entry in entries:
            try:
                real = os.path.realpath(entry / "device")
            except OSError:
                continue
            if f"/{hub}." in real or f"/{hub}/" in real:
                return f"/dev/{entry.name}"
        return None

    def _device(self) -> usb_bridge.SharedDevice:
        if self._dev is None:
            self._dev = usb_bridge.find("SD-Wire", _is_sdwire, self.config.serial, self.backend)
        return self._dev

    def _ctrl(self, bm: int, request: int, value: int, length: int) -> Any:
        dev = self._device()
        what = f"{self.name}: SD-Wire {dev.serial or '(no serial)'}"
        timeout_ms = max(1, int(self.config.usb_timeout * 1000))
        try:
            with dev.lock:
                if bm == IN:
                    return bytes(
                        dev.dev.ctrl_transfer(bm, request, value, FTDI_INDEX, length, timeout_ms)
                    )
                dev.dev.ctrl_transfer(bm, request, value, FTDI_INDEX, None, timeout_ms)
                return b""
        except usb.core.USBError as exc:
            usb_bridge.forget(dev)
            self._dev = None
            if isinstance(exc, usb.core.USBTimeoutError):
                raise DriverError(
                    f"{what} did not answer within {self.config.usb_timeout}s"
                ) from None
            raise usb_bridge.error(what, exc) from None

    async def start(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._first_state)

    async def _first_state(self) -> None:
        try:
            await self.state()
        except Exception:
            pass  # unreachable hardware: the first call reports it

    def _known_path(self) -> str | None:
        return self.config.storage_device
