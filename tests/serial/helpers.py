"""Peers for the serial tests: a pty behind a link, a simulated DUT process, and the
shared driver harness (tests/drivers/harness.py) applied to ``SerialConsole``."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import tty
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from labctl.services.serial.driver import SerialConsole

from ..drivers import harness
from ..drivers.harness import WAIT, MemoryStream, Recorder, Running, trio_test

__all__ = [
    "WAIT",
    "MemoryStream",
    "Pty",
    "Recorder",
    "SimDut",
    "make_driver",
    "running",
    "trio_test",
]


def make_driver(url: str, **config: Any) -> tuple[SerialConsole, Recorder]:
    """A ``SerialConsole`` on ``url`` that retries the port quickly, and its recorder."""
    config.setdefault("reconnect_interval", 0.02)
    return harness.make_driver(SerialConsole, {"url": url, **config}, name="con1")


@asynccontextmanager
async def running(url: str | Path, **config: Any) -> AsyncIterator[Running[SerialConsole]]:
    """A started ``SerialConsole`` on ``url``; closed, and its streams cancelled, on exit."""
    config.setdefault("reconnect_interval", 0.02)
    async with harness.running(SerialConsole, {"url": str(url), **config}, "con1") as run:
        yield run


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
        cmd = [sys.executable, "-m", "labctl.services.simulators.simdut", "--link", str(link)]
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
