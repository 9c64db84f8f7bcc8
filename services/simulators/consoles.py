"""Where a simulated board's console goes: a real pty (``PtyConsole``) or a TCP port
(``TcpConsole``) for a serial service in another container.

Both are driven by ``simdut``'s select loop: ``readers()`` to wait on, ``read_ready``
for input, ``emit`` + ``flush`` for output (non-blocking, at most ``OUTBUF_MAX`` bytes
kept while nobody reads; older bytes are dropped, as on a UART with nothing attached).
"""

from __future__ import annotations

import os
import socket
import tty
from collections.abc import Sequence

#: output kept while nobody reads the console; older bytes are dropped beyond this
OUTBUF_MAX = 64 * 1024


class PtyConsole:
    """The pty side: non-blocking output with a bounded backlog, and the link."""

    def __init__(self, link: str) -> None:
        self.master, self._slave = os.openpty()  # keeping the slave open: no EIO on master
        tty.setraw(self._slave)
        tty.setraw(self.master)
        os.set_blocking(self.master, False)
        self.slave_name = os.ttyname(self._slave)
        self.link = link
        self.out = bytearray()
        tmp = f"{link}.{os.getpid()}.tmp"
        os.symlink(self.slave_name, tmp)
        os.replace(tmp, link)  # atomic: a service never sees a missing or half link

    def emit(self, data: bytes) -> None:
        self.out += data
        if len(self.out) > OUTBUF_MAX:
            del self.out[: len(self.out) - OUTBUF_MAX]

    def flush(self) -> None:
        try:
            written = os.write(self.master, self.out)
        except BlockingIOError:
            return
        del self.out[:written]

    def read(self) -> bytes:
        try:
            return os.read(self.master, 4096)
        except (BlockingIOError, OSError):
            return b""

    def readers(self) -> list[int]:
        return [self.master]

    def read_ready(self, ready: Sequence[object]) -> bytes:
        return self.read()

    def close(self) -> None:
        try:
            if os.readlink(self.link) == self.slave_name:
                os.unlink(self.link)
        except OSError:
            pass
        os.close(self.master)
        os.close(self._slave)


class TcpConsole:
    """The console on TCP (``--listen HOST:PORT``) instead of a pty, so a serial service in
    another container reaches it as ``socket://host:port`` (pyserial). One client at a
    time: a second connection is closed at once (a healthcheck's probe), and output while
    nobody is connected is dropped, as on a UART with nothing attached."""

    def __init__(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        self.server = socket.create_server((host.strip("[]") or "0.0.0.0", int(port)))
        self.server.setblocking(False)
        self.conn: socket.socket | None = None
        self.slave_name = "tcp:{}:{}".format(*self.server.getsockname()[:2])
        self.link = listen
        self.out = bytearray()
        self.master = -1  # nothing to write to until a client connects

    def emit(self, data: bytes) -> None:
        if self.conn is None:
            return
        self.out += data
        if len(self.out) > OUTBUF_MAX:
            del self.out[: len(self.out) - OUTBUF_MAX]

    def flush(self) -> None:
        if self.conn is None or not self.out:
            return
        try:
            sent = self.conn.send(self.out)
        except BlockingIOError:
            return
        except OSError:
            self._drop()
            return
        del self.out[:sent]

    def readers(self) -> list[socket.socket]:
        return [self.server] + ([self.conn] if self.conn is not None else [])

    def read_ready(self, ready: Sequence[object]) -> bytes:
        if self.server in ready:
            try:
                conn, _ = self.server.accept()
            except BlockingIOError:
                conn = None
            if conn is not None and self.conn is not None:
                conn.close()  # busy: keep the one we have
            elif conn is not None:
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.conn, self.master = conn, conn.fileno()
        if self.conn is None or self.conn not in ready:
            return b""
        try:
            data = self.conn.recv(4096)
        except BlockingIOError:
            return b""
        except OSError:
            data = b""
        if not data:
            self._drop()
        return data

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn, self.master = None, -1
        self.out.clear()

    def close(self) -> None:
        self._drop()
        self.server.close()
