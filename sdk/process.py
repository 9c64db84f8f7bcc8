"""Running a trio main as a process: until it ends or SIGINT/SIGTERM asks it to stop."""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from typing import Any

import trio


def run_until_signal(fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
    """Run ``fn(*args)`` under trio; a signal cancels it cleanly (its finally blocks run).

    An error inside nurseries comes out as itself, not wrapped in exception groups, so
    the CLI can print it as one line.
    """

    async def runner() -> None:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        return

            nursery.start_soon(watch)
            await fn(*args)
            nursery.cancel_scope.cancel()

    try:
        trio.run(runner)
    except BaseExceptionGroup as group:
        raise sole_error(group) from None


def sole_error(group: BaseExceptionGroup[Any]) -> BaseException:
    """The one real error inside nested single-member exception groups."""
    err: BaseException = group
    while isinstance(err, BaseExceptionGroup) and len(err.exceptions) == 1:
        err = err.exceptions[0]
    return err
