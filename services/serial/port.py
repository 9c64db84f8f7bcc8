"""Where pyserial's blocking ports meet trio: the only module that touches a port directly.

Two bridges, chosen per port by ``open_port``:

- ``FdPort`` for ports with a real file descriptor (local ttys and ptys, ``socket://``):
  ``trio.lowlevel.wait_readable`` on the non-blocking fd, then ``os.read`` until it is
  drained. No thread hop per read; this is the fast path (see docs/serial.md for numbers).
- ``ThreadPort`` for everything pyserial implements in Python on top of its own threads or
  queues (``rfc2217://``, ``loop://``, ``spy://``, ...): each blocking call runs in a worker
  thread with a short read timeout, so a cancelled read returns within ``READ_TIMEOUT``.

Either way a port that disappears (pty closed, adapter unplugged, socket dropped) raises
``PortGone``; the caller closes the port and reopens it later.
"""

from __future__ import annotations

import contextlib
import os
import termios
from typing import Any

import serial
import trio
from serial.urlhandler import protocol_socket

#: longest a worker thread blocks in one read; bounds how long cancelling a read takes
READ_TIMEOUT = 0.05

_ERRORS = (serial.SerialException, OSError, termios.error, trio.ClosedResourceError)


class PortGone(Exception):
    """The port disappeared or cannot be opened; the message says what the OS said."""


class SettingsRejected(Exception):
    """The port refused a setting (some adapters, and ptys on some kernels, refuse parity)."""


async def open_port(url: str, settings: dict[str, Any]) -> SerialPort:
    """Open ``url`` (any pyserial URL or device path) with ``settings`` applied.

    Opening may block (an rfc2217 handshake, a slow USB adapter), so it runs in a thread.
    """

    def blocking_open() -> serial.SerialBase:
        return serial.serial_for_url(url, timeout=READ_TIMEOUT, **settings)

    try:
        ser = await trio.to_thread.run_sync(blocking_open)
    except (*_ERRORS, ValueError) as exc:
        raise PortGone(f"cannot open {url}: {exc}") from exc
    # Exact types: wrappers such as spy:// subclass Serial but must keep their own I/O.
    if type(ser) in (serial.Serial, protocol_socket.Serial):
        return FdPort(ser)
    return ThreadPort(ser)


class SerialPort:
    """One open port. One task reads; writes must be serialized by the caller."""

    def __init__(self, ser: serial.SerialBase) -> None:
        self.ser = ser

    async def read(self, max_bytes: int) -> bytes:
        """At least one byte, at most ``max_bytes``; raises ``PortGone``."""
        raise NotImplementedError

    async def write(self, data: bytes) -> None:
        """All of ``data``, waiting while the port's output buffer is full."""
        raise NotImplementedError

    async def send_break(self, duration: float) -> None:
        await self._in_thread(self.ser.send_break, duration)

    async def apply_settings(self, settings: dict[str, Any]) -> None:
        """Apply ``settings``; on ``SettingsRejected`` the port keeps its old ones."""
        old = self.ser.get_settings()
        try:
            await trio.to_thread.run_sync(self.ser.apply_settings, settings)
        except (termios.error, ValueError) as exc:
            await self._in_thread(self.ser.apply_settings, old)
            raise SettingsRejected(str(exc)) from exc
        except _ERRORS as exc:
            raise PortGone(str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        """Close the port; never raises (it is called on ports that already failed).

        In a thread: pyserial's socket:// close sleeps 0.3 s "to give the server time".
        """

        def close() -> None:
            with contextlib.suppress(Exception):  # a dead port may fail to close: it is closed
                self.ser.close()

        await trio.to_thread.run_sync(close)

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        try:
            return await trio.to_thread.run_sync(fn, *args)
        except _ERRORS as exc:
            raise PortGone(str(exc) or type(exc).__name__) from exc


class FdPort(SerialPort):
    """A port read and written through its non-blocking file descriptor."""

    def __init__(self, ser: serial.SerialBase) -> None:
        super().__init__(ser)
        self.fd: int = ser.fileno()
        os.set_blocking(self.fd, False)

    async def read(self, max_bytes: int) -> bytes:
        while True:
            try:
                await trio.lowlevel.wait_readable(self.fd)
            except trio.ClosedResourceError as exc:
                raise PortGone("port closed") from exc
            chunks: list[bytes] = []
            got = 0
            # A pty hands out at most about 4 KiB per read: drain it before waiting again.
            while got < max_bytes:
                try:
                    data = os.read(self.fd, max_bytes - got)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if chunks:
                        break  # deliver what arrived; the next read reports the error
                    raise PortGone(f"read failed: {exc}") from exc
                if not data:
                    if chunks:
                        break
                    raise PortGone("end of file (the other side hung up)")
                chunks.append(data)
                got += len(data)
            if chunks:
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.fd, view)
            except BlockingIOError:
                try:
                    await trio.lowlevel.wait_writable(self.fd)
                except trio.ClosedResourceError as exc:
                    raise PortGone("port closed") from exc
                continue
            except OSError as exc:
                raise PortGone(f"write failed: {exc}") from exc
            view = view[written:]
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        trio.lowlevel.notify_closing(self.fd)
        await super().aclose()


class ThreadPort(SerialPort):
    """A port whose pyserial class does its own I/O in Python; each call runs in a thread."""

    async def read(self, max_bytes: int) -> bytes:
        while True:
            data = await self._in_thread(self._read_blocking, max_bytes)
            if data:
                return data  # type: ignore[no-any-return]

    def _read_blocking(self, max_bytes: int) -> bytes:
        first = self.ser.read(1)  # returns b"" after READ_TIMEOUT: lets a cancel through
        if not first:
            if not self.ser.is_open:
                raise serial.SerialException("port closed")
            return b""
        waiting = min(self.ser.in_waiting, max_bytes - 1)
        return first + self.ser.read(waiting) if waiting > 0 else first

    async def write(self, data: bytes) -> None:
        await self._in_thread(self.ser.write, data)
