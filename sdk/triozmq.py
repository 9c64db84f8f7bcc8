"""pyzmq sockets under trio: the one bridge between libzmq's edge-triggered FD and trio.

Why this is subtle (research/stack.md §1): the ZMQ_FD is edge-triggered, and any send or
recv on the socket (from any task) may consume the edge another task sleeps on. So every
operation first tries NOBLOCK, re-reads ``EVENTS`` before sleeping, and after every
successful operation wakes a task waiting on the fd if the socket is ready for it. A
safety timeout on each wait bounds the cost of an edge lost some other way.
"""

from __future__ import annotations

from typing import Any

import trio
import zmq

from . import multipart
from .multipart import NOBLOCK as _NOBLOCK
from .multipart import POLLIN as _POLLIN
from .multipart import POLLOUT as _POLLOUT

_SAFETY = 0.05  # seconds; an upper bound on a lost edge, not a poll interval
_SEND_RETRY = 0.005  # ROUTER_MANDATORY keeps POLLOUT set while one peer is full


class TrioSocket:
    """A zmq socket whose blocking operations are trio checkpoints."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self._fd = sock.FD
        self._waiter: trio.CancelScope | None = None
        self._waiting_for = 0
        self._lot = trio.lowlevel.ParkingLot()
        self.closed = False

    def _poke(self) -> None:
        # Called after every successful operation: a sleeping waiter may have lost its edge.
        if self._waiter is not None and multipart.events(self.sock) & self._waiting_for:
            self._waiter.cancel()

    async def _wait(self, flag: int, limit: float = _SAFETY) -> None:
        if multipart.events(self.sock) & flag:
            return
        while self._waiter is not None:
            await self._lot.park()
            if multipart.events(self.sock) & flag:
                return
        scope = trio.CancelScope(deadline=trio.current_time() + limit)
        self._waiter, self._waiting_for = scope, flag
        try:
            with scope:
                await trio.lowlevel.wait_readable(self._fd)
        finally:
            self._waiter = None
            self._lot.unpark_all()

    def recv_nowait(self, copy: bool = True) -> list[Any] | None:
        """One message if one is ready, else None: lets a loop drain without waiting."""
        if not multipart.events(self.sock) & _POLLIN:
            return None  # cheaper than provoking zmq.Again
        try:
            frames = multipart.recv(self.sock, _NOBLOCK, copy)
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
                await self._wait(_POLLOUT, _SEND_RETRY)
        await trio.lowlevel.checkpoint()

    def close(self, linger: int = 0) -> None:
        if self.closed:
            return
        self.closed = True
        trio.lowlevel.notify_closing(self._fd)
        self.sock.close(linger)
