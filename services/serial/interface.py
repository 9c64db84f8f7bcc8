"""The serial interface: stream ``console``; ``send``, ``log``, ``break``, ``settings``, ``status``.

Everything users call is written once here: the scrollback ring every console stream
reads at its own pace (a slow client slows only itself; one that falls a whole ring behind
is told how many bytes it lost), ``log`` paging, settings validated against the driver's
config, lease reset, status and the events. A driver fills in a few primitives:

- ``write_port(data)``, ``break_port(duration)`` and ``apply_port_settings(settings)``,
  called one at a time (the interface holds a lock around them); they raise
  ``DeviceOffline`` while the line is gone, ``NotSupported`` for a setting it refuses;
- it calls ``received(data)`` with every byte the line produces and ``connected(ok, why)``
  when the line comes or goes; ``port_url`` says what it is connected to.
"""

from __future__ import annotations

import secrets
from typing import Any, ClassVar, Literal

import trio
from pydantic import Field, ValidationError, field_validator

from labctl.errors import BadArguments, BadRequest, DeviceOffline

from ..driver import Driver, DriverConfig
from ..export import export
from ..stream import StreamEnd
from .ring import DEFAULT_SIZE, ScrollbackRing

#: largest piece a console stream sends in one frame (the client's credit must allow it)
CHUNK = 64 * 1024
#: most bytes one ``log()`` reply carries; page on with ``since`` for more
LOG_MAX = 1 << 20
#: writers (console streams with an ``input_id``) whose input byte count is remembered
INPUT_IDS = 256
#: the line settings ``settings()`` changes and every serial driver's config carries
SETTINGS = ("baudrate", "bytesize", "parity", "stopbits", "xonxoff", "rtscts")


class SerialConfig(DriverConfig):
    """The line settings and scrollback size every serial driver's config has."""

    baudrate: int = Field(115200, gt=0)
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Literal["N", "E", "O", "M", "S"] = "N"
    stopbits: float = 1  # 1, 1.5 or 2
    xonxoff: bool = False
    rtscts: bool = False
    scrollback: int = Field(DEFAULT_SIZE, ge=4096)  # bytes of console history kept

    @field_validator("stopbits")
    @classmethod
    def _stopbits(cls, stopbits: float) -> float:
        if stopbits not in (1, 1.5, 2):
            raise ValueError("stopbits must be 1, 1.5 or 2")
        return int(stopbits) if stopbits in (1, 2) else stopbits


class SerialDriver(Driver):
    """A serial console: stream ``console``, ``send``, ``log``, ``break``, ``settings``."""

    kind = "serial"
    Config: ClassVar[type[DriverConfig]] = SerialConfig
    config: SerialConfig
    streams = {"console": {"writable": True}}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ring = ScrollbackRing(self.config.scrollback)
        # names this run's scrollback: offsets start at 0 again when the service restarts,
        # so a reader that resumes with another epoch is told, not fed the wrong bytes
        self.epoch = secrets.token_hex(4)
        self._grew = trio.Event()  # set (and replaced) whenever the ring grows
        self._port_lock = trio.Lock()
        self._settings = self._configured_settings()
        self._connected: bool | None = None  # None until the driver says
        self._error = ""
        self._dropped = 0  # stream bytes thrown away while the port was gone
        self._streams = 0
        self._writers: set[trio.CancelScope] = set()
        # where the output after the current lease's last write begins: ``labctl serial
        # expect`` in a later process searches from here (forgotten by ``reset``)
        self._last_send: int | None = None
        # input bytes taken per writer ``input_id`` (newest INPUT_IDS): a client that
        # reopens its stream after a broker restart learns what arrived and resends the rest
        self._inputs: dict[str, int] = {}

    # -- primitives a driver implements -------------------------------------------------
    @property
    def port_url(self) -> str:
        """What the console is connected to (shown in status)."""
        return ""

    async def write_port(self, data: bytes) -> None:
        """All of ``data`` to the line; ``DeviceOffline`` while it is gone."""
        raise NotImplementedError

    async def break_port(self, duration: float) -> None:
        """Hold the line low for ``duration`` seconds."""
        raise NotImplementedError

    async def apply_port_settings(self, settings: dict[str, Any]) -> None:
        """Apply line settings to the open port (if any); reopening uses ``self.line_settings``."""

    # -- what a driver calls ------------------------------------------------------------
    @property
    def line_settings(self) -> dict[str, Any]:
        """The settings in force: configured, changed by ``settings()`` until reset."""
        return dict(self._settings)

    def received(self, data: bytes) -> None:
        """Bytes the line produced: into the scrollback, and to every console stream."""
        self.ring.append(data)
        self._grew.set()
        self._grew = trio.Event()

    def connected(self, connected: bool, error: str = "") -> None:
        """Record the line's state; publish status and liveness when it changed."""
        self._error = error
        if connected == self._connected:
            return
        self._connected = connected
        status: dict[str, Any] = {"port": "connected" if connected else "disconnected"}
        status["url"] = self.port_url
        if error:
            status["error"] = error
        self.ctx.publish_status(status)
        self.ctx.set_online(connected, "" if connected else f"serial port: {error}")

    # -- lifecycle ----------------------------------------------------------------------
    async def reset(self) -> None:
        """End the lease's writable console streams and restore the configured settings.

        Nothing is sent to the DUT (a stray key or break can stop a bootloader), the port
        stays open and the scrollback is kept: read-only watchers notice nothing.
        """
        for scope in list(self._writers):
            scope.cancel()
        self._last_send = None
        configured = self._configured_settings()
        if configured != self._settings:
            await self._apply_settings(configured)

    # -- the interface ------------------------------------------------------------------
    @export(mutating=True)
    async def send(self, data: str | bytes) -> int:
        """Write ``data`` to the port (a str is UTF-8 encoded); returns the byte count."""
        if isinstance(data, str):
            data = data.encode()
        if not isinstance(data, bytes | bytearray):
            raise BadArguments(f"send: data must be str or bytes, not {type(data).__name__}")
        async with self._port_lock:
            self._last_send = self.ring.end
            await self.write_port(bytes(data))
        return len(data)

    @export
    async def log(
        self, since: int | None = None, tail: int | None = None, epoch: str | None = None
    ) -> dict[str, Any]:
        """Scrollback from absolute offset ``since`` and/or the last ``tail`` bytes.

        Returns ``{"offset", "data", "end"}``: ``data`` starts at ``offset`` (later than
        ``since`` when bytes were overwritten) and ``end`` is the next offset the port
        will write. At most 1 MiB per call: if ``offset + len(data) < end``, call again
        with ``since=offset + len(data)``. No arguments: everything kept.

        ``epoch`` names the scrollback (a new one each time the service starts: offsets
        restart at 0). Pass the one a previous answer had: if the service restarted since,
        the answer starts at the oldest byte of the new run and has ``restarted: {was,
        lost}`` (``lost``: bytes of the new run already overwritten; the old run's output
        after ``since`` is gone too).
        """
        restarted = epoch is not None and epoch != self.epoch
        if restarted:  # ``since`` counts in an earlier run's scrollback: start this one's
            since, tail = None, None
        first = self._first_offset(since, tail, default=self.ring.start)
        offset, data = self.ring.read(first, LOG_MAX)
        out = {"offset": offset, "data": data, "end": self.ring.end, "epoch": self.epoch}
        if restarted:
            out["restarted"] = {"was": epoch, "lost": self.ring.start}
        return out

    async def send_break(self, duration: float = 0.25) -> str:
        """Send a serial break (hold the line low ``duration`` s; SysRq on Linux)."""
        async with self._port_lock:
            await self.break_port(float(duration))
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
        """Port state, current settings, scrollback offsets and stream counts.

        ``last_send``: the scrollback offset at the last ``send`` since the last lease
        reset (None if none), where the answer to it starts.
        """
        return {
            "port": "connected" if self._connected else "disconnected",
            "url": self.port_url,
            "error": self._error,
            "settings": dict(self._settings),
            "start": self.ring.start,
            "end": self.ring.end,
            "streams": self._streams,
            "writers": len(self._writers),
            "dropped": self._dropped,
            "last_send": self._last_send,
        }

    # -- the console stream -------------------------------------------------------------
    async def open_stream(self, name: str, end: StreamEnd) -> None:
        """Serve one console stream until the client closes it (the runtime cancels us).

        ``end.args``: ``since`` (absolute offset) and/or ``tail`` (bytes of scrollback to
        replay first); neither means live data only. ``epoch``: the scrollback ``since``
        counts in; if the service restarted since (another epoch), the stream starts at
        the new run's oldest byte and the first frame says ``restarted: {was, lost}``.
        The first frame is header-only: ``offset``, ``epoch`` (and ``input``, below). Every frame's meta has ``offset``
        (of its first byte), plus ``gap`` (bytes lost) when the reader fell behind the
        ring. A writable end's input goes to the port; while the port is gone it is
        dropped (counted in ``status()['dropped']``). With ``input_id`` (a writer's token,
        the same across its reopens) the first frame is header-only with ``input``: the
        bytes of that writer's input taken so far, and every frame carries it on, so a
        client that reopens after a broker restart resends exactly what was lost.
        """
        if name != "console":
            raise BadRequest(f"{self.name}: no stream {name!r}; serial devices offer 'console'")
        args = end.args or {}
        since, tail, epoch = args.get("since"), args.get("tail"), args.get("epoch")
        restarted = epoch is not None and epoch != self.epoch
        if restarted:  # ``since`` counts in an earlier run's scrollback: start this one's
            since, tail = self.ring.start, None
        position = self._first_offset(since, tail, self.ring.end)
        input_id = args.get("input_id") if end.writable else None
        if input_id is not None and not isinstance(input_id, str):
            raise BadArguments(f"input_id must be a string, not {input_id!r}")
        scope = trio.CancelScope()  # reset() cancels it to end a lease's writable stream
        self._streams += 1
        try:
            with scope:
                if end.writable:
                    self._writers.add(scope)
                # a header-only first frame: where the stream starts, in which scrollback
                first: dict[str, Any] = {"offset": position, "epoch": self.epoch}
                if restarted:
                    first["restarted"] = {"was": epoch, "lost": self.ring.start}
                if input_id is not None:
                    first["input"] = self._inputs.setdefault(input_id, 0)
                    while len(self._inputs) > INPUT_IDS:
                        del self._inputs[next(iter(self._inputs))]
                await end.send(b"", first)
                async with trio.open_nursery() as nursery:
                    if end.writable:
                        nursery.start_soon(self._forward_input, end, input_id)
                    await self._forward_output(end, position, input_id)
        finally:
            self._streams -= 1
            self._writers.discard(scope)
        if scope.cancelled_caught:
            await end.close("the lease on this device ended")

    async def _forward_output(self, end: StreamEnd, position: int, input_id: str | None) -> None:
        while True:
            offset, data = self.ring.read(position, CHUNK)
            if not data:
                await self._grew.wait()
                continue
            meta: dict[str, Any] = {"offset": offset}
            if offset > position:
                meta["gap"] = offset - position
            if input_id is not None:  # acknowledges the writer's input taken so far
                meta["input"] = self._inputs.get(input_id, 0)
            await end.send(data, meta)
            position = offset + len(data)

    async def _forward_input(self, end: StreamEnd, input_id: str | None) -> None:
        while True:
            try:
                data = await end.receive()
            except trio.EndOfChannel:
                return  # the client stopped writing; keep showing it the console
            try:
                async with self._port_lock:
                    self._last_send = self.ring.end
                    await self.write_port(data)
            except DeviceOffline:
                self._dropped += len(data)
            if input_id is not None:  # taken (written, or dropped and counted): not resent
                self._inputs[input_id] = self._inputs.get(input_id, 0) + len(data)

    # -- helpers ------------------------------------------------------------------------
    def _configured_settings(self) -> dict[str, Any]:
        return {key: getattr(self.config, key) for key in SETTINGS}

    async def _apply_settings(self, new: dict[str, Any]) -> None:
        """Apply ``new`` to the port and remember it for reconnects.

        Settings the port refuses are not remembered, or every reopen would fail too.
        """
        async with self._port_lock:
            await self.apply_port_settings(new)
            self._settings = new

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


async def _break(self: SerialDriver, duration: float = 0.25) -> str:
    """Send a serial break (hold the line low ``duration`` s; SysRq on Linux)."""
    return await self.send_break(duration)


# ``break`` is a Python keyword, so the bus name is attached to the class by hand; the
# export machinery finds methods by their class attribute name, so this is all it takes.
_break.__name__ = _break.__qualname__ = "break"
setattr(SerialDriver, "break", export(mutating=True)(_break))
