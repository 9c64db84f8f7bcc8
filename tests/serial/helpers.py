"""Peers for the serial tests: an in-memory console stream, a recording device context,
a simulated DUT process, and a bridge that runs a driver in a trio thread."""

from __future__ import annotations

import math
import os
import queue
import subprocess
import sys
import threading
import tty
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
import trio.testing

from labctl.services.driver import DeviceContext
from labctl.services.serial.driver import SerialConsole

WAIT = 10  # seconds any single condition may take before a test fails


from ..harness import trio_test  # noqa: E402,F401  (re-exported for the tests here)


class MemoryStream:
    """Both ends of one stream in memory, with byte credit as on the bus.

    The device side is the ``StreamEnd`` protocol. As on the bus, ``send`` splits data
    into pieces the client has granted credit for (``window`` bytes in flight at most,
    ``offset`` advanced per piece), so a client that does not read stalls only its own
    stream.
    """

    def __init__(
        self, args: dict[str, Any] | None = None, writable: bool = False, window: int = 1 << 20
    ) -> None:
        self.args = args or {}
        self.writable = writable
        self.credit = window
        self._credit_changed = trio.Event()
        self._out_send, self._out = trio.open_memory_channel[tuple[bytes, dict[str, Any]]](math.inf)
        self._in_send, self._in = trio.open_memory_channel[bytes](16)
        self.close_reason: str | None = None

    # -- the device's end (StreamEnd) ---------------------------------------------------
    async def send(self, data: bytes, meta: dict[str, Any] | None = None) -> None:
        meta = dict(meta or {})
        while data:
            while self.credit <= 0:
                self._credit_changed = trio.Event()
                await self._credit_changed.wait()
            piece, data = data[: self.credit], data[self.credit :]
            self.credit -= len(piece)
            await self._out_send.send((bytes(piece), meta))
            meta = {"offset": meta["offset"] + len(piece)} if "offset" in meta else {}

    async def receive(self) -> bytes:
        return await self._in.receive()

    async def close(self, reason: str = "") -> None:
        self.close_reason = reason
        await self._out_send.aclose()

    # -- the client's end ---------------------------------------------------------------
    async def client_receive(self) -> tuple[bytes, dict[str, Any]]:
        """Next frame; raises ``trio.EndOfChannel`` after the device closed the stream."""
        data, meta = await self._out.receive()
        self.credit += len(data)
        self._credit_changed.set()
        return data, meta

    async def client_read(self, count: int) -> tuple[int, bytes]:
        """Exactly ``count`` bytes (frames joined) and the offset of the first one."""
        data, meta = await self.client_receive()
        first, chunks, got = meta["offset"], [data], len(data)
        while got < count:
            data, meta = await self.client_receive()
            assert meta["offset"] == first + got, (meta, first, got)
            chunks.append(data)
            got += len(data)
        return first, b"".join(chunks)

    async def client_wait_for_offset(self, end: int) -> None:
        """Read frames (gaps allowed) until the one ending at offset ``end``."""
        reached = -1
        while reached < end:
            data, meta = await self.client_receive()
            reached = meta["offset"] + len(data)

    async def client_send(self, data: bytes) -> None:
        await self._in_send.send(data)


class EventRecorder:
    """A ``DeviceContext`` whose events land in a list tests can wait on."""

    def __init__(self, name: str = "con1") -> None:
        self.events: list[tuple[str, Any]] = []
        self._changed = trio.Event()
        self.ctx = DeviceContext(name, self._publish, self._set_online)

    def _publish(self, topic: str, body: Any) -> None:
        self.events.append((topic, body))
        self._changed.set()
        self._changed = trio.Event()

    def _set_online(self, online: bool, reason: str) -> None:
        self._publish("online", {"online": online, "reason": reason})

    def statuses(self) -> list[str]:
        return [body["port"] for topic, body in self.events if topic.endswith(".status")]

    async def wait_for_status(self, port: str, count: int = 1) -> None:
        """Wait until the ``count``-th status event saying ``port`` arrived."""
        with trio.fail_after(WAIT):
            while self.statuses().count(port) < count:
                await self._changed.wait()


def make_driver(url: str, **config: Any) -> tuple[SerialConsole, EventRecorder]:
    config.setdefault("reconnect_interval", 0.02)
    recorder = EventRecorder()
    return SerialConsole(recorder.ctx, SerialConsole.Config(url=url, **config)), recorder


@dataclass
class Running:
    driver: SerialConsole
    events: EventRecorder
    nursery: trio.Nursery

    async def stream(self, args: dict[str, Any] | None = None, **kwargs: Any) -> MemoryStream:
        """Open a console stream and wait until the driver serves it."""
        stream = MemoryStream(args, **kwargs)
        self.nursery.start_soon(self.driver.open_stream, "console", stream)
        await trio.testing.wait_all_tasks_blocked()
        return stream


@asynccontextmanager
async def running(url: str | Path, **config: Any) -> AsyncIterator[Running]:
    """A started serial driver; on exit it is closed and all its streams are cancelled."""
    driver, events = make_driver(str(url), **config)
    async with trio.open_nursery() as nursery:
        await driver.start(nursery)
        try:
            yield Running(driver, events, nursery)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(WAIT):
                await driver.close()
            nursery.cancel_scope.cancel()


class Pty:
    """A pty whose slave path is reached through a symlink (like a udev name)."""

    def __init__(self, link: Path) -> None:
        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.slave_name = os.ttyname(slave)
        os.close(slave)  # the driver opens it by name
        os.set_blocking(self.master, False)
        tmp = link.with_suffix(".tmp")
        tmp.symlink_to(self.slave_name)
        tmp.replace(link)

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.master, view) :]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.master)

    async def read(self, count: int) -> bytes:
        out = bytearray()
        with trio.fail_after(WAIT):
            while len(out) < count:
                await trio.lowlevel.wait_readable(self.master)
                out += os.read(self.master, count - len(out))
        return bytes(out)

    def close(self) -> None:
        trio.lowlevel.notify_closing(self.master)
        os.close(self.master)


class SimDut:
    """A ``simdut`` process; ``stop`` ends it, and the fixture always calls it."""

    def __init__(self, link: Path, power_file: Path, *extra: str) -> None:
        cmd = [sys.executable, "-m", "labctl.services.serial.simdut", "--link", str(link)]
        cmd += ["--power-file", str(power_file), "--boot-delay", "0.05", *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()
        try:
            self.wait_line("simdut ready ")
        except BaseException:
            self.stop()
            raise

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_line(self, prefix: str) -> str:
        """Wait for the next stdout line starting with ``prefix`` (power changes, ready)."""
        while True:
            try:
                line = self.lines.get(timeout=WAIT)
            except queue.Empty:
                raise AssertionError(f"simdut never printed {prefix!r}") from None
            if line.startswith(prefix):
                return line

    def stop(self, kill: bool = False) -> None:
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=WAIT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
