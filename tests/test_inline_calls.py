"""The service runs a driver call in its receive task until the call first suspends."""

from __future__ import annotations

import trio

from labctl.services.runtime import stepped

from .harness import trio_test


@trio_test
async def test_a_call_that_does_not_suspend_finishes_without_handing_off() -> None:
    handed: list[bool] = []

    async def state() -> str:
        return "on"

    assert await stepped(state(), lambda: handed.append(True)) == "on"
    assert handed == []


@trio_test
async def test_a_call_that_suspends_hands_off_once_and_keeps_locks_and_scopes_in_its_task() -> None:
    handed: list[bool] = []
    lock = trio.Lock()

    async def switch() -> str:
        async with lock:  # the owner is the task that awaits stepped(), before and after
            await trio.sleep(0)
            with trio.move_on_after(5):
                await trio.sleep(0.01)
        return "done"

    assert await stepped(switch(), lambda: handed.append(True)) == "done"
    assert handed == [True]
    assert not lock.locked()


@trio_test
async def test_a_suspended_call_is_cancelled_by_its_scope_and_errors_propagate() -> None:
    async def hangs() -> None:
        await trio.sleep_forever()

    with trio.move_on_after(0.01) as scope:
        await stepped(hangs(), lambda: None)
    assert scope.cancelled_caught

    async def fails() -> None:
        await trio.sleep(0)
        raise ValueError("boom")

    try:
        await stepped(fails(), lambda: None)
    except ValueError as exc:
        assert str(exc) == "boom"
    else:
        raise AssertionError("the error was lost")
