"""Running a power driver inside trio with a DeviceContext that records what it says."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio

from labctl.services.driver import DeviceContext, Driver

D = TypeVar("D", bound=Driver)


from ..harness import trio_test  # noqa: E402,F401  (re-exported for the tests here)


class Recorder:
    """Collects published events and online changes; tests wait on it, never sleep."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.online: list[tuple[bool, str]] = []
        self._changed = trio.Event()

    def publish(self, topic: str, body: Any) -> None:
        self.events.append((topic, body))
        self._poke()

    def set_online(self, online: bool, reason: str) -> None:
        self.online.append((online, reason))
        self._poke()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    @property
    def states(self) -> list[str]:
        return [body["state"] for topic, body in self.events if topic.endswith(".status")]

    @property
    def is_online(self) -> bool | None:
        return self.online[-1][0] if self.online else None

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` holds after some event; fail after ``timeout``."""
        with trio.fail_after(timeout):
            while not predicate():
                await self._changed.wait()


@asynccontextmanager
async def running(
    cls: type[D], cfg: dict[str, Any], name: str = "dut-power", **kwargs: Any
) -> AsyncIterator[tuple[D, Recorder]]:
    """A started driver and its recorder; closes it and cancels its tasks on exit."""
    rec = Recorder()
    ctx = DeviceContext(name, publish=rec.publish, set_online=rec.set_online)
    driver = cls(ctx, cls.Config(**cfg), **kwargs)
    async with trio.open_nursery() as nursery:
        await driver.start(nursery)
        try:
            yield driver, rec
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
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
