"""Running one driver inside trio, without a broker: the harness every kind's tests share.

``running(cls, config)`` starts a driver with a :class:`Recorder` as its device context and
stops it (``close``, then its tasks are cancelled) when the block ends. ``MemoryStream`` is
both ends of one stream in memory, with byte credit as on the bus, for drivers that offer
streams (serial ``console``, storage ``upload``). Tests wait on what the driver says,
never on a fixed sleep.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import trio
import trio.testing

from labctl.services.driver import DeviceContext, Driver

from ..harness import trio_test

__all__ = [
    "WAIT",
    "MemoryStream",
    "Recorder",
    "Running",
    "eventually",
    "make_driver",
    "running",
    "trio_test",
]

D = TypeVar("D", bound=Driver)

WAIT = 10  # seconds any single condition may take before a test fails


class Recorder:
    """A ``DeviceContext`` (``.ctx``) whose events and online changes land in lists."""

    def __init__(self, name: str = "dev1") -> None:
        self.events: list[tuple[str, Any]] = []
        self.online: list[tuple[bool, str]] = []
        self._changed = trio.Event()
        self.ctx = DeviceContext(name, publish=self.publish, set_online=self.set_online)

    def publish(self, topic: str, body: Any) -> None:
        self.events.append((topic, body))
        self._poke()

    def set_online(self, online: bool, reason: str) -> None:
        self.online.append((online, reason))
        self._poke()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def statuses(self, key: str) -> list[Any]:
        """``key`` of every status the driver published, in order."""
        return [body.get(key) for topic, body in self.events if topic.endswith(".status")]

    @property
    def states(self) -> list[str]:
        """The power ``state`` of every status published."""
        return self.statuses("state")

    @property
    def is_online(self) -> bool | None:
        return self.online[-1][0] if self.online else None

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        """Wait until ``predicate()`` holds after some event; fail after ``timeout``."""
        with trio.fail_after(timeout):
            while not predicate():
                await self._changed.wait()

    async def wait_for_status(self, key: str, value: Any, count: int = 1) -> None:
        """Wait until the ``count``-th status with ``key == value`` was published."""
        await self.wait_for(lambda: self.statuses(key).count(value) >= count)


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

    async def client_close(self) -> None:
        """The client stops writing (the device's ``receive`` ends)."""
        await self._in_send.aclose()


@dataclass
class Running(Generic[D]):
    """A started driver, what it said, and the nursery its streams run in.

    Unpacks as ``driver, recorder`` (``async with running(...) as (drv, rec)``).
    """

    driver: D
    events: Recorder
    nursery: trio.Nursery

    def __iter__(self) -> Iterator[Any]:
        return iter((self.driver, self.events))

    async def stream(
        self, args: dict[str, Any] | None = None, name: str = "console", **kwargs: Any
    ) -> MemoryStream:
        """Open stream ``name`` and wait until the driver serves it (blocks on it)."""
        stream = MemoryStream(args, **kwargs)
        self.nursery.start_soon(self.driver.open_stream, name, stream)  # type: ignore[attr-defined]
        await trio.testing.wait_all_tasks_blocked()
        return stream


def make_driver(
    cls: type[D], config: dict[str, Any], name: str = "dev1", **kwargs: Any
) -> tuple[D, Recorder]:
    """A driver of ``cls`` (config validated as the runtime does) and its recorder."""
    recorder = Recorder(name)
    return cls(recorder.ctx, cls.Config(**config), **kwargs), recorder


@asynccontextmanager
async def running(
    cls: type[D], config: dict[str, Any], name: str = "dev1", **kwargs: Any
) -> AsyncIterator[Running[D]]:
    """A started driver; on exit it is closed and its tasks (streams too) are cancelled."""
    driver, recorder = make_driver(cls, config, name, **kwargs)
    async with trio.open_nursery() as nursery:
        await driver.start(nursery)
        try:
            yield Running(driver, recorder, nursery)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(WAIT):
                await driver.close()
            nursery.cancel_scope.cancel()


async def eventually(
    check: Callable[[], Awaitable[Any]],
    retry_on: tuple[type[BaseException], ...] = (AssertionError,),
    timeout: float = 5.0,
) -> Any:
    """Bounded polling for conditions nothing signals (e.g. telemetry not yet sent)."""
    with trio.fail_after(timeout):
        while True:
            try:
                return await check()
            except retry_on:
                await trio.sleep(0.02)
