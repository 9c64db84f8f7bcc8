"""python-can buses, bridged into trio: received frames arrive in batches, sends are direct.

Two ways in, chosen per bus:

- The bus has a file descriptor (socketcan, udp_multicast): trio waits until it is readable
  and drains ``recv(0)`` in its own thread. No thread hop at all.
- It has none (virtual, most vendor DLLs): one reader thread blocks in ``recv`` and appends
  to a shared deque; it wakes trio (``TrioToken.run_sync_soon``) only when no wake-up is
  already pending, so one hop carries every frame that arrived meanwhile, and the busier
  trio is the bigger the batches get. ``hops`` and ``frames`` count both, for the benchmark.

``send`` calls the bus directly from trio: python-can sends are non-blocking on every
interface we use (a full kernel queue raises ``CanOperationError``, nothing waits). Sends
from other threads (can-isotp's worker, python-can's periodic tasks) are safe as well:
python-can buses allow one receiving and several sending threads.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any

import can
import trio

#: most frames taken off the bus before trio hears about them
BATCH = 4096


class CanBridge:
    """One python-can bus as seen from trio: ``run(deliver)`` feeds received frames."""

    def __init__(self, bus: can.BusABC) -> None:
        self.bus = bus
        self.hops = 0  # times a batch crossed from the reader thread into trio
        self.frames = 0  # frames received
        self.threaded = False

    def send(self, msg: can.Message) -> None:
        self.bus.send(msg)

    async def run(self, deliver: Callable[[list[can.Message]], None]) -> None:
        """Call ``deliver(batch)`` in trio for every batch of received frames, until cancelled
        (or the bus fails: its exception propagates)."""
        try:
            fd = self.bus.fileno()
        except NotImplementedError:
            fd = -1
        if fd >= 0:
            await self._run_fd(fd, deliver)
        else:
            self.threaded = True
            await self._run_thread(deliver)

    async def _run_fd(self, fd: int, deliver: Callable[[list[can.Message]], None]) -> None:
        recv = self.bus.recv
        while True:
            await trio.lowlevel.wait_readable(fd)
            batch: list[can.Message] = []
            while len(batch) < BATCH:
                msg = recv(0)
                if msg is None:
                    break
                batch.append(msg)
            if batch:
                self.frames += len(batch)
                deliver(batch)
            else:
                await trio.lowlevel.checkpoint()

    async def _run_thread(self, deliver: Callable[[list[can.Message]], None]) -> None:
        token = trio.lowlevel.current_trio_token()
        ready: collections.deque[can.Message] = collections.deque()
        stop = threading.Event()
        pending = [False]  # a wake-up is queued in trio; guarded by `lock`
        lock = threading.Lock()
        failure: list[BaseException] = []

        def flush() -> None:  # in trio
            with lock:
                pending[0] = False
                batch = list(ready)
                ready.clear()
            if batch:
                self.frames += len(batch)
                deliver(batch)

        def reader() -> None:  # the one thread this bus gets
            recv = self.bus.recv
            try:
                while not stop.is_set():
                    msg = recv(0.1)
                    if msg is None:
                        continue
                    with lock:
                        ready.append(msg)
                        n = 1
                        while n < BATCH:
                            more = recv(0)
                            if more is None:
                                break
                            ready.append(more)
                            n += 1
                        if pending[0]:
                            continue
                        pending[0] = True
                    self.hops += 1
                    token.run_sync_soon(flush)
            except BaseException as exc:  # the bus broke: tell trio, end the thread
                failure.append(exc)

        async def stop_when_cancelled() -> None:
            try:
                await trio.sleep_forever()
            finally:
                stop.set()  # the reader sees it within 0.1 s

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_when_cancelled)
            # not abandoned on cancel: the thread is joined before run() returns
            await trio.to_thread.run_sync(reader, abandon_on_cancel=False)
            nursery.cancel_scope.cancel()  # it ended by itself: the bus failed
        if failure:
            raise failure[0]


def thread_send(
    bus: can.BusABC, token: Any, after: Callable[[can.Message], None]
) -> Callable[[can.Message], None]:
    """A send for threads other than trio's (can-isotp's worker): sends at once, then runs
    ``after(msg)`` in trio (the loopback to this device's readers)."""

    def send(msg: can.Message) -> None:
        bus.send(msg)
        try:
            token.run_sync_soon(after, msg)
        except trio.RunFinishedError:
            pass

    return send
