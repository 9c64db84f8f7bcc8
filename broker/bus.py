"""The broker's ROUTER: receiving and sending whole messages with few Python calls each.

pyzmq's ``recv_multipart``/``send_multipart`` loop in Python over ``IntFlag`` arithmetic
(about 30 enum operations per message); sends go through ``labctl.multipart`` (int flags),
and receiving reads each frame's ``more`` instead of asking for ``RCVMORE``. Payload frames
(frame 4 on, after routing id, tag, type and header) are received without a copy and sent
on as the same ``zmq.Frame``, so stream data crosses the broker without a byte copied in
Python. The routing id and headers are small and turned into bytes.

Only the broker's trio thread touches the socket. ZMQ_FD is edge-triggered: every send may
consume the edge the receiving loop sleeps on, so a send made while that loop is parked
has what is waiting handled right after (``_drain_if_parked``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
import zmq

from labctl import multipart
from labctl.multipart import NOBLOCK as _NOBLOCK
from labctl.trio_idle import READY, WOKE, idle_poll

from .peers import Peers

_HEAD_FRAMES = 4  # routing id, tag, type, header: bytes; the rest are payload frames
_recv = zmq.backend.Socket.recv  # the Cython methods: no Python wrapper per frame
_send = zmq.backend.Socket.send
_get = zmq.backend.Socket.get
_SNDMORE = multipart.NOBLOCK | multipart.SNDMORE
_EVENTS, _POLLIN = multipart.EVENTS, multipart.POLLIN


class BusSocket:
    """The bus ROUTER under trio: ``serve`` receives, ``send_nowait`` sends."""

    def __init__(self, sock: zmq.Socket, peers: Peers) -> None:
        self.sock = sock
        self.fd = sock.FD
        self.peers = peers
        self._handle: Callable[[list[Any]], None] | None = None
        self._parked = False  # serve() sleeps on the FD; a send elsewhere must look
        self._drain_due = False

    def ready(self) -> bool:
        """A message can be received now (asking also re-arms the FD's edge)."""
        return bool(multipart.events(self.sock) & multipart.POLLIN)

    def recv(self) -> list[Any]:
        """One whole message, routing id first, when ``ready()`` said so (else zmq.Again).

        Frames come as ``zmq.Frame`` (its ``more`` is cheaper than asking for RCVMORE); the
        routing id, tag, type and header are turned into bytes, payload frames stay frames.
        """
        sock = self.sock
        frame = _recv(sock, _NOBLOCK, False)
        ident = frame.bytes
        peers = self.peers
        # a new connection: who is it? (once per peer; with CurveZMQ, again if a routing id
        # comes back on another connection: a peer may choose its own)
        if ident not in peers.known or (peers.keys is not None and peers.changed(ident, frame)):
            peers.learn(ident, frame)
        frames: list[Any] = [ident]
        while frame.more:
            frame = _recv(sock, 0, False)  # the rest of a multipart message is here already
            frames.append(frame.bytes if len(frames) < _HEAD_FRAMES else frame)
        return frames

    async def serve(self, handle: Callable[[list[Any]], None]) -> None:
        """Hand every message to ``handle``: drain what is ready, then sleep on the FD (one
        trio wait per batch; a checkpoint after 256 in a row lets timers run).

        Right after the FD fired a message is almost always there: it is received without
        asking EVENTS first (one EVENTS read, two syscalls, less per message; a wake-up for
        something else costs a zmq.Again). EVENTS is always read before sleeping again.
        While trio has nothing else to do, the sleep is in zmq_poll (``trio_idle``)."""
        self._handle = handle
        sock, recv = self.sock, self.recv
        woke = False
        while True:
            n = 0
            if woke:
                try:
                    frames = recv()
                except zmq.Again:
                    pass
                else:
                    handle(frames)
                    n = 1
            while n < 256 and _get(sock, _EVENTS) & _POLLIN:  # ready(), one call less
                handle(recv())
                n += 1
            if n == 256:
                await trio.lowlevel.checkpoint()
                woke = False
                continue
            verdict = idle_poll(sock)  # trio idle: sleep in zmq_poll, no scheduler trip
            if verdict == READY:
                woke = True
                continue
            if verdict == WOKE:  # something else needs trio; then look again
                await trio.lowlevel.checkpoint()
                woke = False
                continue
            self._parked = True
            try:
                await trio.lowlevel.wait_readable(self.fd)
            finally:
                self._parked = False
            woke = True

    def send_nowait(self, frames: list[Any]) -> bool:
        """Send now; False if the peer's queue is full. EHOSTUNREACH (gone) raises.

        Bytes are copied into the message (small: headers); a ``zmq.Frame`` is passed on
        without copying its bytes (payload frames as they were received)."""
        sock, last = self.sock, len(frames) - 1
        try:  # multipart.send inlined: the broker sends twice per RPC
            for i in range(last):
                _send(sock, frames[i], _SNDMORE, True)
            _send(sock, frames[last], _NOBLOCK, True)
        except zmq.Again:
            return False  # ROUTER_MANDATORY refuses the first frame; nothing went out
        if self._parked:
            # A timer task or a store callback sent while serve() slept: the send may have
            # taken the FD's edge.
            self.look()
        return True

    def look(self) -> None:
        """If serve() sleeps while a message waits, handle it right after the current step
        (not inside the caller, which may be in the middle of changing state). Sends from
        outside the loop call it; so does the heartbeat tick, bounding any edge lost some
        other way to one interval."""
        if self._parked and not self._drain_due and self.ready():
            self._drain_due = True
            trio.lowlevel.current_trio_token().run_sync_soon(self._drain_if_parked)

    def _drain_if_parked(self) -> None:
        self._drain_due = False
        if not self._parked or self._handle is None:
            return  # serve() woke up by itself and drains
        self._parked = False  # sends made by these handlers must not schedule again
        try:
            while self.ready():
                self._handle(self.recv())
        finally:
            self._parked = True

    def close(self) -> None:
        trio.lowlevel.notify_closing(self.fd)
        self.sock.close(0)
