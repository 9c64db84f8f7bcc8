"""The ``serial`` device kind's ``pyserial`` driver: a console with scrollback.

One background task keeps the port open (reopening it every ``reconnect_interval`` after
it disappears) and copies everything it reads into a ``ScrollbackRing``. Console streams
never get data pushed at them: each one reads the ring at its own pace, so a slow client
slows only itself, and one that falls a whole ring behind is told how many bytes it lost.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

import serial
import trio
from pydantic import Field, ValidationError, field_validator

from labctl.errors import BadArguments, BadRequest, DeviceOffline, NotSupported

from ..driver import Driver, DriverConfig
from ..export import export
from ..stream import StreamEnd
from .port import SETTINGS, PortGone, SerialPort, SettingsRejected, open_port
from .ring import DEFAULT_SIZE, ScrollbackRing

#: largest piece a console stream sends in one frame (the client's credit must allow it)
CHUNK = 64 * 1024
#: most bytes one ``log()`` reply carries; page on with ``since`` for more
LOG_MAX = 1 << 20
#: most bytes the port reader takes in one go
READ_MAX = 256 * 1024


class SerialConsoleConfig(DriverConfig):
    """``config:`` of a ``kind: serial, driver: pyserial`` device."""

    url: str = Field(min_length=1)  # /dev/ttyUSB0, socket://h:p, rfc2217://h:p, loop://
    baudrate: int = Field(115200, gt=0)
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Literal["N", "E", "O", "M", "S"] = "N"
    stopbits: float = 1  # 1, 1.5 or 2
    xonxoff: bool = False
    rtscts: bool = False
    scrollback: int = Field(DEFAULT_SIZE, ge=4096)  # bytes of console history kept
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

    @field_validator("stopbits")
    @classmethod
    def _stopbits(cls, stopbits: float) -> float:
        if stopbits not in serial.SerialBase.STOPBITS:
            raise ValueError("stopbits must be 1, 1.5 or 2")
        return int(stopbits) if stopbits in (1, 2) else stopbits


class SerialConsole(Driver):
    """A serial console: stream ``console``, ``send``, ``log``, ``break``, ``settings``."""

    kind = "serial"
    Config = SerialConsoleConfig
    config: SerialConsoleConfig
    streams = {"console": {"writable": True}}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ring = ScrollbackRing(self.config.scrollback)
        self._grew = trio.Event()  # set (and replaced) whenever the ring grows
        self._port: SerialPort | None = None
        self._write_lock = trio.Lock()
        self._settings = self._configured_settings()
        self._connected: bool | None = None  # None until the first open attempt
        self._error = ""
        self._dropped = 0  # stream bytes thrown away while the port was gone
        self._streams = 0
        self._writers: set[trio.CancelScope] = set()
        self._stop = trio.CancelScope()
        self._started = False
        self._stopped = trio.Event()

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

    async def reset(self) -> None:
        """End the lease's writable console streams and restore the configured settings.

        Nothing is sent to the DUT (a stray key or break can stop a bootloader), the port
        stays open and the scrollback is kept: read-only watchers notice nothing.
        """
        for scope in list(self._writers):
            scope.cancel()
        configured = self._configured_settings()
        if configured != self._settings:
            await self._apply_settings(configured)

    # -- the port task ------------------------------------------------------------------
    async def _keep_port_open(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        try:
            with self._stop:
                while True:
                    port: SerialPort | None = None
                    try:
                        port = self._port = await open_port(self.config.url, self._settings)
                        self._mark(True)
                    except PortGone as exc:
                        self._mark(False, str(exc))
                    if not started:
                        started = True
                        task_status.started()
                    if port is not None:
                        try:
                            await self._pump(port)
                        except PortGone as exc:
                            self._mark(False, str(exc))
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
            data = await port.read(read_max)
            self.ring.append(data)
            self._grew.set()
            self._grew = trio.Event()

    def _mark(self, connected: bool, error: str = "") -> None:
        """Record the port's state; publish status and liveness when it changed."""
        self._error = error
        if connected == self._connected:
            return
        self._connected = connected
        status: dict[str, Any] = {"port": "connected" if connected else "disconnected"}
        status["url"] = self.config.url
        if error:
            status["error"] = error
        self.ctx.publish_status(status)
        self.ctx.set_online(connected, "" if connected else f"serial port: {error}")

    # -- writing ------------------------------------------------------------------------
    async def _write(self, data: bytes) -> None:
        async with self._write_lock:
            port = self._require_port()
            try:
                await port.write(data)
            except PortGone as exc:
                raise DeviceOffline(f"{self.name}: serial port went away: {exc}") from exc

    def _require_port(self) -> SerialPort:
        if self._port is None:
            raise DeviceOffline(
                f"{self.name}: serial port {self.config.url} is disconnected: {self._error}"
            )
        return self._port

    # -- settings -----------------------------------------------------------------------
    def _configured_settings(self) -> dict[str, Any]:
        return {key: getattr(self.config, key) for key in SETTINGS}

    async def _apply_settings(self, new: dict[str, Any]) -> None:
        """Apply ``new`` to the open port, if any, and remember it for reconnects.

        Settings the port refuses are not remembered, or every reopen would fail too.
        """
        async with self._write_lock:
            if self._port is not None:
                try:
                    await self._port.apply_settings(new)
                except SettingsRejected as exc:
                    raise NotSupported(f"{self.name}: the port refused {new}: {exc}") from exc
                except PortGone as exc:
                    raise DeviceOffline(f"{self.name}: cannot apply settings: {exc}") from exc
            self._settings = new

    # -- the interface ------------------------------------------------------------------
    @export(mutating=True)
    async def send(self, data: str | bytes) -> int:
        """Write ``data`` to the port (a str is UTF-8 encoded); returns the byte count."""
        if isinstance(data, str):
            data = data.encode()
        if not isinstance(data, bytes | bytearray):
            raise BadArguments(f"send: data must be str or bytes, not {type(data).__name__}")
        await self._write(bytes(data))
        return len(data)

    @export
    async def log(self, since: int | None = None, tail: int | None = None) -> dict[str, Any]:
        """Scrollback from absolute offset ``since`` and/or the last ``tail`` bytes.

        Returns ``{"offset", "data", "end"}``: ``data`` starts at ``offset`` (later than
        ``since`` when bytes were overwritten) and ``end`` is the next offset the port
        will write. At most 1 MiB per call: if ``offset + len(data) < end``, call again
        with ``since=offset + len(data)``. No arguments: everything kept.
        """
        first = self._first_offset(since, tail, default=self.ring.start)
        offset, data = self.ring.read(first, LOG_MAX)
        return {"offset": offset, "data": data, "end": self.ring.end}

    async def send_break(self, duration: float = 0.25) -> str:
        """Send a serial break (hold the line low ``duration`` s; SysRq on Linux)."""
        async with self._write_lock:
            port = self._require_port()
            try:
                await port.send_break(float(duration))
            except PortGone as exc:
                raise DeviceOffline(f"{self.name}: serial port went away: {exc}") from exc
        return "break"

    @export(mutating=True)
    async def settings(
        self,
        baudrate: int | None = None,
        bytesize: int | None = None,
        parity: str | None = None,
        stopbits: float | None = None,
        xonxoff: bool | None = None,
        rtscts: bool | None = None,
    ) -> dict[str, Any]:
        """Change the given port settings (kept across reconnects until the lease ends)."""
        given = dict(
            baudrate=baudrate,
            bytesize=bytesize,
            parity=parity,
            stopbits=stopbits,
            xonxoff=xonxoff,
            rtscts=rtscts,
        )
        changes = {key: value for key, value in given.items() if value is not None}
        try:
            checked = self.Config.model_validate(
                {**self.config.model_dump(), **self._settings, **changes}
            )
        except ValidationError as exc:
            raise BadArguments(f"settings: {exc}") from exc
        new = {key: getattr(checked, key) for key in SETTINGS}
        if new != self._settings:
            await self._apply_settings(new)
        return dict(self._settings)

    @export
    async def status(self) -> dict[str, Any]:
        """Port state, current settings, scrollback offsets and stream counts."""
        return {
            "port": "connected" if self._connected else "disconnected",
            "url": self.config.url,
            "error": self._error,
            "settings": dict(self._settings),
            "start": self.ring.start,
            "end": self.ring.end,
            "streams": self._streams,
            "writers": len(self._writers),
            "dropped": self._dropped,
        }

    # -- the console stream -------------------------------------------------------------
    async def open_stream(self, name: str, end: StreamEnd) -> None:
        """Serve one console stream until the client closes it (the runtime cancels us).

        ``end.args``: ``since`` (absolute offset) and/or ``tail`` (bytes of scrollback to
        replay first); neither means live data only. Every frame's meta has ``offset``
        (of its first byte), plus ``gap`` (bytes lost) when the reader fell behind the
        ring. A writable end's input goes to the port; while the port is gone it is
        dropped (counted in ``status()['dropped']``).
        """
        if name != "console":
            raise BadRequest(f"{self.name}: no stream {name!r}; serial devices offer 'console'")
        args = end.args or {}
        position = self._first_offset(args.get("since"), args.get("tail"), self.ring.end)
        scope = trio.CancelScope()  # reset() cancels it to end a lease's writable stream
        self._streams += 1
        try:
            with scope:
                if end.writable:
                    self._writers.add(scope)
                async with trio.open_nursery() as nursery:
                    if end.writable:
                        nursery.start_soon(self._forward_input, end)
                    await self._forward_output(end, position)
        finally:
            self._streams -= 1
            self._writers.discard(scope)
        if scope.cancelled_caught:
            await end.close("the lease on this device ended")

    async def _forward_output(self, end: StreamEnd, position: int) -> None:
        while True:
            offset, data = self.ring.read(position, CHUNK)
            if not data:
                await self._grew.wait()
                continue
            meta: dict[str, Any] = {"offset": offset}
            if offset > position:
                meta["gap"] = offset - position
            await end.send(data, meta)
            position = offset + len(data)

    async def _forward_input(self, end: StreamEnd) -> None:
        while True:
            try:
                data = await end.receive()
            except trio.EndOfChannel:
                return  # the client stopped writing; keep showing it the console
            try:
                await self._write(data)
            except DeviceOffline:
                self._dropped += len(data)

    def _first_offset(self, since: Any, tail: Any, default: int) -> int:
        """Where a read starts: ``since`` clamped to the ring, at most ``tail`` back."""
        for arg, value in (("since", since), ("tail", tail)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise BadArguments(f"{arg} must be an integer offset, not {value!r}")
            if value is not None and value < 0:
                raise BadArguments(f"{arg} must not be negative, got {value}")
        if since is None and tail is None:
            return default
        first = min(since, self.ring.end) if since is not None else 0
        if tail is not None:
            first = max(first, self.ring.end - tail)
        return first


async def _break(self: SerialConsole, duration: float = 0.25) -> str:
    """Send a serial break (hold the line low ``duration`` s; SysRq on Linux)."""
    return await self.send_break(duration)


# ``break`` is a Python keyword, so the bus name is attached to the class by hand; the
# export machinery finds methods by their class attribute name, so this is all it takes.
_break.__name__ = _break.__qualname__ = "break"
setattr(SerialConsole, "break", export(mutating=True)(_break))
