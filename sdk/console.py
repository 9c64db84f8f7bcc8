"""A serial console with pexpect's API, over any byte transport.

``Console`` subclasses ``pexpect.spawnbase.SpawnBase``, so ``expect``, ``expect_exact``,
``expect_list``, ``read``, ``readline``, ``sendline``, ``before``/``after``/``match`` and
the ``pexpect.TIMEOUT``/``pexpect.EOF`` exceptions behave exactly as they do in pexpect.
What it reads and writes goes through a ``Transport``: the SDK hands it one over a console
stream; ``FdTransport`` wraps a file descriptor (a pty, a socket) for tests and local use.

    with Console(transport, timeout=60) as con:
        con.expect("login:")
        con.sendline("root")
        con.expect_exact("# ")

Text mode (``encoding="utf-8"``, the default) takes and returns ``str`` and decodes with
``codec_errors="replace"``, because a console that prints a stray byte at boot must not
crash a test. ``encoding=None`` is pexpect's bytes mode. ``send``/``write`` accept bytes
in either mode, for raw use. ``sendline`` ends lines with ``linesep`` (``"\\n"``, as in
pexpect; set ``con.linesep = "\\r"`` for consoles that want a carriage return).
"""

from __future__ import annotations

import errno
import math
import os
import select
from typing import IO, Any, Protocol

from pexpect import EOF, TIMEOUT
from pexpect.spawnbase import SpawnBase

__all__ = ["EOF", "TIMEOUT", "Console", "FdTransport", "Transport"]

#: how much of the console's recent output a failed ``expect`` shows
TAIL = 2048

_CONTROL = {"@": 0, "`": 0, "[": 27, "{": 27, "\\": 28, "|": 28, "]": 29, "}": 29}
_CONTROL.update({"^": 30, "~": 30, "_": 31, "?": 127})


class Transport(Protocol):
    """A byte pipe to a console; calls come from one thread at a time."""

    def read_some(self, timeout: float | None) -> bytes:
        """At least one byte that arrived, ``b""`` at end of stream.

        Raises ``TimeoutError`` when nothing arrived within ``timeout`` seconds
        (``None``: wait for ever; ``0``: only what is already there).
        """
        ...

    def write(self, data: bytes) -> None:
        """Send all of ``data``; may block while the far end is slow."""
        ...

    def close(self) -> None: ...


class Console(SpawnBase):  # type: ignore[misc]
    """pexpect over a ``Transport``; one user thread at a time, like pexpect itself."""

    def __init__(
        self,
        transport: Transport,
        timeout: float | None = 30,
        maxread: int = 65536,
        searchwindowsize: int | None = None,
        logfile: IO[Any] | None = None,
        encoding: str | None = "utf-8",
        codec_errors: str = "replace",
    ) -> None:
        super().__init__(
            timeout=timeout,
            maxread=maxread,
            searchwindowsize=searchwindowsize,
            logfile=logfile,
            encoding=encoding,
            codec_errors=codec_errors,
        )
        self.transport = transport
        # pexpect sleeps around reads and sends for the sake of ptys and child processes;
        # a transport needs neither, and 100 us per read caps throughput.
        self.delayafterread = None
        self.delaybeforesend = None
        self.closed = False
        self.flag_eof = False
        self.name = f"<Console {transport!r}>"
        self._pending = b""  # bytes read but not yet handed out (a read asked for fewer)
        self._pending_at = 0

    # -- reading ------------------------------------------------------------------------
    def read_nonblocking(self, size: int = 1, timeout: float | None = -1) -> Any:
        """Up to ``size`` bytes (decoded in text mode) that arrived within ``timeout``.

        Raises ``pexpect.TIMEOUT`` when nothing arrived and ``pexpect.EOF`` when the
        console stream ended. ``timeout=-1`` means the console's default ``timeout``.
        """
        data = self.read_bytes(size, timeout)
        text = self._decoder.decode(data, final=False)
        self._log(text, "read")
        return text

    def read_bytes(self, size: int = 65536, timeout: float | None = -1) -> bytes:
        """Like ``read_nonblocking`` but raw bytes in either mode, and unlogged."""
        if self.closed:
            raise ValueError("I/O operation on a closed console")
        if self._pending_at >= len(self._pending):
            if self.flag_eof:
                raise EOF("End of stream: the console was closed")
            if timeout == -1:
                timeout = self.timeout
            try:
                self._pending = self.transport.read_some(timeout)
            except TimeoutError:
                raise TIMEOUT("Timeout exceeded.") from None
            self._pending_at = 0
            if not self._pending:
                self.flag_eof = True
                raise EOF("End of stream: the console was closed")
        start = self._pending_at
        self._pending_at = min(len(self._pending), start + max(1, size))
        if start == 0 and self._pending_at == len(self._pending):
            return self._pending
        return self._pending[start : self._pending_at]

    # -- writing ------------------------------------------------------------------------
    def send(self, s: str | bytes) -> int:
        """Write ``s`` (str is encoded in text mode; bytes go as they are)."""
        if isinstance(s, bytes | bytearray | memoryview):
            data = bytes(s)
            self._log(data if self.encoding is None else data.decode(errors="replace"), "send")
        else:
            s = self._coerce_send_string(s)
            self._log(s, "send")
            data = self._encoder.encode(s, final=False)
        self.transport.write(data)
        return len(data)

    def sendline(self, s: str | bytes = "") -> int:
        """Write ``s`` and ``linesep``."""
        if isinstance(s, bytes | bytearray | memoryview):
            linesep = self.linesep if isinstance(self.linesep, bytes) else self.linesep.encode()
            return self.send(bytes(s) + linesep)
        return self.send(self._coerce_send_string(s) + self.linesep)

    def sendcontrol(self, char: str) -> int:
        """Send Ctrl-``char`` (``sendcontrol("c")`` interrupts the shell on the console)."""
        char = char.lower()
        code = ord(char) - ord("a") + 1 if "a" <= char <= "z" else _CONTROL.get(char)
        if code is None:
            raise ValueError(f"no control character for {char!r}")
        return self.send(bytes((code,)))

    def sendintr(self) -> int:
        return self.sendcontrol("c")

    def write(self, s: str | bytes) -> None:
        self.send(s)

    def writelines(self, sequence: Any) -> None:
        for s in sequence:
            self.send(s)

    # -- ending -------------------------------------------------------------------------
    def close(self) -> None:
        """Close the transport (the console stream); further reads raise ``ValueError``."""
        if not self.closed:
            self.closed = True
            self.transport.close()

    def isalive(self) -> bool:
        return not self.closed and not self.flag_eof

    def eof(self) -> bool:
        return bool(self.flag_eof)

    # -- where we are -------------------------------------------------------------------
    @property
    def offset(self) -> int | None:
        """Absolute scrollback offset just past what ``expect``/``read`` consumed (after
        the last match), so a later reader can continue there with ``since``; None when
        the transport does not tag offsets. Exact in bytes mode (``encoding=None``)."""
        read_offset = getattr(self.transport, "read_offset", None)
        if read_offset is None:
            return None
        buffered = self.buffer
        if isinstance(buffered, str):
            buffered = buffered.encode(self.encoding or "utf-8", errors="replace")
        return int(read_offset) - (len(self._pending) - self._pending_at) - len(buffered)

    def __str__(self) -> str:
        """What a failed ``expect`` shows (pexpect puts ``str(console)`` in its TIMEOUT and
        EOF messages): the console's last ``TAIL`` characters, so a failed boot in CI can
        be read from the test's output."""
        return printed_tail(self.name, self.before)


def printed_tail(name: str, before: Any) -> str:
    """``name`` and the last ``TAIL`` characters of ``before`` (what the console printed
    since the last match), for the message of a failed expect."""
    if isinstance(before, bytes):
        before = before.decode(errors="replace")
    if not before:
        return f"{name}: printed nothing since the last match"
    tail = before[-TAIL:]
    cut = f"last {len(tail)} of {len(before)}" if len(before) > TAIL else f"all {len(before)}"
    return f"{name}: {cut} characters printed since the last match:\n{tail}"


class FdTransport:
    """A ``Transport`` over a file descriptor: a pty side, a socket, a pipe pair.

    ``EIO`` on read (Linux's answer on a pty whose other side closed) counts as end of
    stream, as does a zero-byte read.
    """

    def __init__(self, fd: int, write_fd: int | None = None, close_fds: bool = True) -> None:
        self.fd = fd
        self.write_fd = fd if write_fd is None else write_fd
        self.close_fds = close_fds
        self._closed = False

    def __repr__(self) -> str:
        return f"FdTransport(fd={self.fd})"

    def _wait(self, fd: int, event: int, timeout: float | None) -> bool:
        poller = select.poll()
        poller.register(fd, event)
        return bool(poller.poll(None if timeout is None else max(0, math.ceil(timeout * 1000))))

    def read_some(self, timeout: float | None) -> bytes:
        while True:
            if not self._wait(self.fd, select.POLLIN, timeout):
                raise TimeoutError(f"nothing to read within {timeout} s")
            try:
                return os.read(self.fd, 65536)
            except BlockingIOError:
                continue  # a spurious wakeup; wait again
            except OSError as exc:
                if exc.errno == errno.EIO:
                    return b""
                raise

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.write_fd, view) :]
            except BlockingIOError:
                self._wait(self.write_fd, select.POLLOUT, None)

    def close(self) -> None:
        if self._closed or not self.close_fds:
            self._closed = True
            return
        self._closed = True
        os.close(self.fd)
        if self.write_fd != self.fd:
            os.close(self.write_fd)
