"""pyzmq sockets under trio: the one bridge between libzmq's edge-triggered FD and trio.

Why this is subtle (research/stack.md §1): the ZMQ_FD is edge-triggered, and any send,
recv or ``EVENTS`` read on the socket (from any task) may consume the edge another task
sleeps on. So every operation first tries NOBLOCK, and every ``EVENTS`` read goes through
``_ready``, which wakes the task sleeping on the fd if the socket is now ready for what
it waits for: no edge is lost, so a wait for input needs no timeout and no cancel scope
(those cost more than the message itself: an echo through a service took 73 µs with a
scope per wait, 49 µs without, 35 µs blocking). A wait for room to send keeps a short
retry timeout (ROUTER_MANDATORY keeps POLLOUT set while one peer is full).
"""

from __future__ import annotations

from typing import Any

import trio
import zmq

from . import multipart
from .multipart import NOBLOCK as _NOBLOCK
from .multipart import POLLIN as _POLLIN
from .multipart import POLLOUT as _POLLOUT
from .trio_idle import READY, WOKE, idle_poll

_SEND_RETRY = 0.005  # seconds between send attempts while the peer is full


class TrioSocket:
    """A zmq socket whose blocking operations are trio checkpoints."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self._fd = sock.FD
        self._sleeper: object | None = None  # the wait sleeping on the fd, if any
        self._waiting_for = 0  # what it waits for (0: nothing, or it was woken already)
        self._lot = trio.lowlevel.ParkingLot()  # other tasks that want to wait meanwhile
        self.closed = False

    def _ready(self, flag: int) -> bool:
        """Whether the socket is ready for ``flag`` (POLLIN/POLLOUT) now. Reading EVENTS
        may take the edge the sleeping task waits for: if it is ready for that, wake it
        (``notify_closing`` wakes it with ClosedResourceError; ``_wait`` knows)."""
        events = multipart.events(self.sock)
        if events & self._waiting_for:
            self._waiting_for = 0
            trio.lowlevel.notify_closing(self._fd)
        return bool(events & flag)

    def _poke(self) -> None:
        # After every successful operation: a sleeping waiter may have lost its edge.
        if self._waiting_for:
            self._ready(0)

    async def _wait(self, flag: int, checked: bool = False) -> None:
        """Sleep until the socket is ready for ``flag``; ``checked``: the caller has just
        read EVENTS (it was not ready) and touched nothing since, so the edge is armed."""
        if not checked and self._ready(flag):
            return
        while self._sleeper is not None:  # one task sleeps on the fd; others wait their turn
            await self._lot.park()
            if self._ready(flag):
                return
        self._sleeper = token = object()
        self._waiting_for = flag
        try:
            if flag == _POLLIN:
                await trio.lowlevel.wait_readable(self._fd)
            else:
                with trio.move_on_after(_SEND_RETRY):
                    await trio.lowlevel.wait_readable(self._fd)
        except trio.ClosedResourceError:
            if self.closed:
                raise
            # woken by _ready: another operation found the socket ready for us
        finally:
            if self._sleeper is token:
                self._sleeper, self._waiting_for = None, 0
            if self._lot:
                self._lot.unpark_all()

    def recv_nowait(self, copy: bool = True) -> list[Any] | None:
        """One message if one is ready, else None: lets a loop drain without waiting.

        ``copy=False``: frames of 64 KiB or more come as zmq.Frame, without a copy; the
        smaller ones (tag, type, header, most payloads) as bytes (``recv_message``)."""
        if not self._ready(_POLLIN):
            return None  # cheaper than provoking zmq.Again
        return self.recv_woken(copy)

    async def wait_readable(self) -> None:
        """Sleep until a message may be ready. Only right after ``recv_nowait()`` returned
        None: that read EVENTS, which re-armed the FD's edge; ``recv()`` reads it twice
        more before it sleeps (per message a loop receives). May wake with nothing.

        While trio has nothing else to do it sleeps in zmq_poll, not in trio's loop
        (``trio_idle``): a message is then received without a pass through the scheduler.
        """
        if self._sleeper is None:  # no other task sleeps on this socket's fd
            verdict = idle_poll(self.sock)
            if verdict == READY:
                return
            if verdict == WOKE:
                await trio.lowlevel.checkpoint()
                return
        await self._wait(_POLLIN, checked=True)

    def recv_woken(self, copy: bool = True) -> list[Any] | None:
        """``recv_nowait`` without reading EVENTS first: right after ``wait_readable()``
        returned, the FD fired and a message is almost always there (two syscalls less).
        None if there was none (the wake-up was for something else): then read EVENTS
        (``recv_nowait``) before waiting again."""
        try:
            frames = (
                multipart.recv(self.sock, _NOBLOCK)
                if copy
                else multipart.recv_message(self.sock, _NOBLOCK)
            )
        except zmq.Again:
            return None
        self._poke()
        return frames

    async def recv(self, copy: bool = True) -> list[Any]:
        waited = False
        while True:
            frames = self.recv_nowait(copy)
            if frames is not None:
                if not waited:  # every trio blocking call must be a checkpoint
                    await trio.lowlevel.checkpoint()
                return frames
            await self._wait(_POLLIN)
            waited = True

    def send_nowait(self, frames: list[Any], copy: bool = True) -> bool:
        """Send if possible now; False when the peer (or the socket) is full."""
        try:
            multipart.send(self.sock, frames, _NOBLOCK, copy)
        except zmq.Again:
            return False
        self._poke()
        return True

    async def send(self, frames: list[Any], copy: bool = True, timeout: float = 5.0) -> None:
        """Send, waiting for room up to ``timeout``; raises trio.TooSlowError after that.

        ``zmq.ZMQError`` (EHOSTUNREACH from a ROUTER_MANDATORY socket) propagates.
        """
        with trio.fail_after(timeout):
            while not self.send_nowait(frames, copy):
                await self._wait(_POLLOUT)
        await trio.lowlevel.checkpoint()

    def close(self, linger: int = 0) -> None:
        if self.closed:
            return
        self.closed = True
        trio.lowlevel.notify_closing(self._fd)
        self.sock.close(linger)
