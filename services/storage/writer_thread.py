"""The edge between the service's trio loop and the thread that writes an image.

``write_image`` runs one write: the image onto the target in a worker thread, the final
fsync within its timeout, the read-back verify. ``UploadPipe`` carries an upload stream's
chunks to that thread with bounded memory (flow control reaches back to the uploader);
``run_in_thread`` runs one blocking step and stops the thread when the trio side is
cancelled (lease end, broker lost), so no thread outlives the target's file descriptor.
``failure_text`` is what ``info()`` says about a write that did not finish.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import trio

from labctl.errors import DriverError, LabError

from .decompress import Aborted, CountingReader
from .pipeline import ImageWriter, Progress, WritePlan, Written

T = TypeVar("T")


async def write_image(
    name: str,
    path: str,
    plan: WritePlan,
    open_source: Callable[[], Any],
    progress: Progress,
    abort: threading.Event,
    *,
    ticker: Callable[[], Awaitable[None]],
    feeder: Callable[[], Awaitable[None]] | None = None,
    pipe: UploadPipe | None = None,
    fsync_timeout: float | None = None,
) -> Written:
    """Write the image ``open_source()`` gives (called in the thread) onto ``path``; then
    fsync (unless ``fsync_timeout`` is None) and verify when the plan says so. ``ticker``
    and ``feeder`` run beside it until it ends. A card whose fsync hangs is an error and
    its fd stays open, as a thread is still inside fsync(fd)."""
    fd = await trio.to_thread.run_sync(os.open, path, os.O_RDWR | os.O_CLOEXEC)
    leaked = False
    try:
        target_size = await trio.to_thread.run_sync(os.lseek, fd, 0, os.SEEK_END)
        writer = ImageWriter(fd, target_size, plan, progress, abort)

        def write() -> Written:
            return writer.run(CountingReader(open_source(), abort))

        with single_error():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ticker)
                if feeder is not None:
                    nursery.start_soon(feeder)
                written = await run_in_thread(write, abort, pipe)
                if fsync_timeout is not None:
                    progress.enter("sync", None)
                    with trio.move_on_after(fsync_timeout):
                        await trio.to_thread.run_sync(os.fsync, fd, abandon_on_cancel=True)
                        progress.phase = "synced"
                    if progress.phase != "synced":
                        leaked = True
                        raise DriverError(
                            f"{name}: fsync did not finish within {fsync_timeout:g}s "
                            "(the card may be failing)"
                        )
                if plan.verify:
                    await run_in_thread(lambda: writer.verify(written), abort, None)
                nursery.cancel_scope.cancel()
        return written
    finally:
        if not leaked:
            os.close(fd)


class UploadPipe:
    """Chunks an upload stream task puts (trio side) and the writer thread reads.

    Holds at most ``limit`` bytes: past that ``put`` waits, the stream task stops taking
    input, the service grants no credit, and the client's writes stall: flow control from
    the medium back to the uploader.
    """

    def __init__(self, limit: int = 8 << 20) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._cond = threading.Condition()
        self._chunks: deque[Any] = deque()
        self._size = 0
        self._limit = limit
        self._eof = False
        self._error: BaseException | None = None
        self._space: trio.Event | None = None

    async def fill(self, end: Any, size: int) -> None:
        """Put everything the upload stream ``end`` sends; it must come to exactly ``size``
        bytes, else the writer thread reads an error naming how many came."""
        got = 0
        try:
            while True:
                data = await end.receive()
                got += len(data)
                await self.put(data)
        except trio.EndOfChannel:
            pass
        if got == size:
            self.finish()
        else:
            self.abort(Aborted(f"the upload ended after {got} of {size} bytes"))

    async def put(self, data: Any) -> None:
        with self._cond:
            self._chunks.append(data)
            self._size += len(data)
            self._cond.notify()
            wait = None
            if self._size >= self._limit and self._error is None:
                wait = self._space = trio.Event()
        if wait is not None:
            await wait.wait()

    def finish(self) -> None:
        with self._cond:
            self._eof = True
            self._cond.notify()

    def abort(self, error: BaseException) -> None:
        with self._cond:
            self._error = error
            self._cond.notify()
            space, self._space = self._space, None
        if space is not None:
            space.set()

    def read(self, n: int) -> Any:
        """The writer thread's side: at most ``n`` bytes, ``b""`` at the end."""
        with self._cond:
            while not self._chunks and not self._eof and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            if not self._chunks:
                return b""
            data = self._chunks.popleft()
            if len(data) > n:
                view = memoryview(data)
                self._chunks.appendleft(view[n:])
                data = view[:n]
            self._size -= len(data)
            if self._space is not None and self._size < self._limit // 2:
                space, self._space = self._space, None
                self._token.run_sync_soon(space.set)
            return data


async def run_in_thread(fn: Callable[[], T], abort: threading.Event, pipe: UploadPipe | None) -> T:
    """Run ``fn`` in a worker thread; if this task is cancelled meanwhile (lease end,
    broker lost), tell the thread to stop and wait for it, so no thread outlives the fd."""

    finished = False

    async def watch() -> None:
        try:
            await trio.sleep_forever()
        finally:
            if not finished:
                abort.set()
                if pipe is not None:
                    pipe.abort(Aborted("write stopped"))

    with single_error():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            try:
                return await trio.to_thread.run_sync(fn)
            finally:
                finished = True
                nursery.cancel_scope.cancel()


@contextlib.contextmanager
def single_error() -> Iterator[None]:
    """Re-raise a nursery's lone error as itself (callers and the bus expect LabErrors,
    not a group of one); cancellations stay as trio raised them."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        real = [e for e in leaves if not isinstance(e, trio.Cancelled)]
        if len(real) == 1:
            raise real[0] from None
        if not real and leaves:
            raise leaves[0] from None
        raise


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


def failure_text(exc: BaseException) -> str:
    """One line for ``info()``'s last write: why it did not finish."""
    if isinstance(exc, LabError):
        return exc.message
    if isinstance(exc, Aborted) and str(exc).startswith("the upload ended"):
        return f"{exc} (the client went away or the lease ended)"
    if isinstance(exc, (trio.Cancelled, Aborted)):
        return "stopped before it finished (lease ended, client or broker went away)"
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(failure_text(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"
