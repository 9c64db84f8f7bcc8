"""The ``serial`` device kind's ``pyserial`` driver: any pyserial URL, reopened when it returns.

One background task keeps the port open (reopening it every ``reconnect_interval`` after
it disappears) and hands everything it reads to the interface's scrollback
(:class:`~labctl.services.serial.interface.SerialDriver`, which serves ``log``, the
console streams and the rest); writes, breaks and settings go to the open port.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import serial
import trio
from pydantic import Field, field_validator

from labctl.errors import DeviceOffline, NotSupported

from .interface import SerialConfig, SerialDriver
from .port import PortGone, SerialPort, SettingsRejected, open_port

#: most bytes the port reader takes in one go
READ_MAX = 256 * 1024


class SerialConsoleConfig(SerialConfig):
    """``config:`` of a ``kind: serial, driver: pyserial`` device."""

    url: str = Field(min_length=1)  # /dev/ttyUSB0, socket://h:p, rfc2217://h:p, loop://
    reconnect_interval: float = Field(1.0, gt=0)  # seconds between reopen attempts

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if "://" not in url:
            return url  # a device path; whether it exists is checked when opening
        scheme = url.split("://", 1)[0].lower()
        for package in serial.protocol_handler_packages:
            if importlib.util.find_spec(f"{package}.protocol_{scheme}") is not None:
                return url
        raise ValueError(f"pyserial knows no {scheme}:// ports")


class SerialConsole(SerialDriver):
    """A pyserial port (device path or URL) as a serial console."""

    Config = SerialConsoleConfig
    config: SerialConsoleConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._port: SerialPort | None = None
        self._stop = trio.CancelScope()
        self._started = False
        self._stopped = trio.Event()

    @property
    def port_url(self) -> str:
        return self.config.url

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self, nursery: trio.Nursery) -> None:
        """Start the port task; returns after the first open attempt, whatever its outcome."""
        self._started = True
        await nursery.start(self._keep_port_open)

    async def close(self) -> None:
        """Stop the port task and close the port."""
        self._stop.cancel()
        if self._started:
            await self._stopped.wait()

    # -- the port task ------------------------------------------------------------------
    async def _keep_port_open(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        try:
            with self._stop:
                while True:
                    port: SerialPort | None = None
                    try:
                        port = self._port = await open_port(self.config.url, self.line_settings)
                        self.connected(True)
                    except PortGone as exc:
                        self.connected(False, str(exc))
                    if not started:
                        started = True
                        task_status.started()
                    if port is not None:
                        try:
                            await self._pump(port)
                        except PortGone as exc:
                            self.connected(False, str(exc))
                        finally:
                            self._port = None
                            with trio.CancelScope(shield=True):
                                await port.aclose()
                    await trio.sleep(self.config.reconnect_interval)
        finally:
            self._stopped.set()

    async def _pump(self, port: SerialPort) -> None:
        # One read never takes more than a quarter of the ring, so a burst cannot
        # overwrite bytes that streams which keep up have not been woken for yet.
        read_max = min(READ_MAX, max(1024, self.ring.size // 4))
        while True:
            self.received(await port.read(read_max))

    # -- the primitives ------------------------------------------------------------------
    async def write_port(self, data: bytes) -> None:
        port = self._require_port()
        try:
            await port.write(data)
        except PortGone as exc:
            raise DeviceOffline(f"{self.name}: serial port went away: {exc}") from exc

    async def break_port(self, duration: float) -> None:
        port = self._require_port()
        try:
            await port.send_break(duration)
        except PortGone as exc:
            raise DeviceOffline(f"{self.name}: serial port went away: {exc}") from exc

    async def apply_port_settings(self, settings: dict[str, Any]) -> None:
        if self._port is None:
            return  # applied when the port is opened again
        try:
            await self._port.apply_settings(settings)
        except SettingsRejected as exc:
            raise NotSupported(f"{self.name}: the port refused {settings}: {exc}") from exc
        except PortGone as exc:
            raise DeviceOffline(f"{self.name}: cannot apply settings: {exc}") from exc

    def _require_port(self) -> SerialPort:
        if self._port is None:
            raise DeviceOffline(
                f"{self.name}: serial port {self.config.url} is disconnected: {self._error}"
            )
        return self._port
