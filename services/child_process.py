"""Child processes that die with the process that started them, even when it is SIGKILLed.

``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child ends, not its process.
``trio.lowlevel.open_process`` forks in one of trio's worker threads, and those exit after
10 s idle: a child started that way with a death signal is killed 10 s later (a QEMU board
powered off by itself, ``rc=-9``). So these children are forked from the trio thread itself
(fork+exec takes a few milliseconds) and awaited through a pidfd, with no thread at all.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
from typing import Any

import trio

from .forkserver import die_with_parent


class Child:
    """A started child: ``pid``, ``returncode`` (None while it runs), ``kill()``, ``wait()``."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid
        self._pidfd: int | None = os.pidfd_open(popen.pid)  # readable once it has exited
        self._watched = False  # one task waits on the pidfd; the others on _moved
        self._moved = trio.Event()

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()

    async def wait(self) -> int:
        """The exit status, once the child has exited (any number of tasks may wait)."""
        while self.popen.poll() is None:
            if self._watched:
                await self._moved.wait()
                continue
            assert self._pidfd is not None
            self._watched = True
            try:
                await trio.lowlevel.wait_readable(self._pidfd)
            finally:  # exited or cancelled: the others look again (one of them may watch)
                self._watched = False
                if self.popen.poll() is not None:
                    os.close(self._pidfd)
                    self._pidfd = None
                self._moved.set()
                self._moved = trio.Event()
        return self.popen.wait()


def spawn(argv: list[str], death_signal: int = signal.SIGKILL, **popen: Any) -> Child:
    """Start ``argv`` from the calling (trio) thread; it gets ``death_signal`` when this
    process dies. ``popen`` are ``subprocess.Popen`` options (not ``preexec_fn``)."""
    set_death_signal = functools.partial(die_with_parent, death_signal)
    proc = subprocess.Popen(argv, preexec_fn=set_death_signal, **popen)  # noqa: PLW1509
    return Child(proc)
