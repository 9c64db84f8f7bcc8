"""Run asyncio-only libraries (pysnmp 7) from trio on one asyncio loop in its own thread.

Why a thread and not trio-asyncio: importing trio-asyncio changes the asyncio loop policy
for the whole process, and a service may host several drivers; one plain loop thread per
process, created lazily and shared by every driver, keeps the two event loops apart
(``research/stack.md`` §2). No trio worker thread is blocked while a coroutine runs: the
future's done-callback wakes the waiting trio task through its ``TrioToken``.

What may go wrong: a coroutine that never finishes keeps its trio caller waiting, so
callers put their own deadline around :meth:`AsyncioThread.run` (cancellation is
forwarded to the asyncio task). Objects bound to the loop (pysnmp engines, transports)
must be created and used only inside coroutines run here.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import trio

T = TypeVar("T")


class AsyncioThread:
    """A lazily started asyncio event loop in a daemon thread, usable from any trio run."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._on_stop: list[Callable[[], Awaitable[None]]] = []

    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, started on first use."""
        with self._lock:
            if self._loop is None:
                ready = threading.Event()
                holder: list[asyncio.AbstractEventLoop] = []

                def main() -> None:
                    # Built directly, not through the (possibly replaced) loop policy.
                    loop = asyncio.SelectorEventLoop()
                    holder.append(loop)
                    ready.set()
                    loop.run_forever()
                    loop.close()

                self._thread = threading.Thread(target=main, name=self.name, daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = holder[0]
            return self._loop

    async def run(self, make_coro: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``make_coro()`` on the loop and return its result to the calling trio task.

        If the trio task is cancelled, the asyncio task is cancelled too and
        ``trio.Cancelled`` propagates; exceptions of the coroutine are re-raised here.
        """
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        fut = asyncio.run_coroutine_threadsafe(make_coro(), self.loop())

        def wake(_: concurrent.futures.Future[T]) -> None:
            with contextlib.suppress(trio.RunFinishedError):  # the caller's run has ended
                token.run_sync_soon(done.set)

        fut.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            fut.cancel()
            raise
        return fut.result()

    def on_stop(self, cleanup: Callable[[], Awaitable[None]]) -> None:
        """Register a coroutine function run inside the loop before it stops."""
        self._on_stop.append(cleanup)

    def stop(self, timeout: float = 2.0) -> None:
        """Run the cleanups, stop the loop and join its thread (at exit; safe to repeat)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
            cleanups, self._on_stop = self._on_stop, []
        if loop is None or thread is None:
            return

        async def finish() -> None:
            for cleanup in cleanups:
                with contextlib.suppress(Exception):  # best effort at shutdown
                    await cleanup()

        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            asyncio.run_coroutine_threadsafe(finish(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)


_THREADS: dict[str, AsyncioThread] = {}
_THREADS_LOCK = threading.Lock()


def shared_loop(name: str = "labctl-asyncio") -> AsyncioThread:
    """The process-wide loop thread called ``name``; stopped cleanly at interpreter exit."""
    with _THREADS_LOCK:
        if name not in _THREADS:
            _THREADS[name] = AsyncioThread(name)
        return _THREADS[name]


@atexit.register
def _stop_all() -> None:
    for thread in list(_THREADS.values()):
        thread.stop()
