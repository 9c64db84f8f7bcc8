"""A page that does not read costs a bounded queue, then one resync: never a wait."""

from __future__ import annotations

import trio
import trio.testing

from labctl.broker.dashboard.fanout import ClientQueue

from ..harness import trio_test


@trio_test
async def test_a_full_queue_is_dropped_and_the_client_resynced() -> None:
    q = ClientQueue(limit=3)
    assert await q.next() is None  # a new client starts with a snapshot
    for i in range(3):
        q.put(f"m{i}")
    assert [await q.next() for _ in range(3)] == ["m0", "m1", "m2"]
    for i in range(10):  # the client stopped reading: the puts never wait
        q.put(f"x{i}")
    assert q.resyncs == 1 and not q.items
    assert await q.next() is None  # the snapshot replaces what it missed
    q.put("y")
    assert await q.next() == "y"


@trio_test
async def test_next_waits_for_a_put() -> None:
    q = ClientQueue()
    await q.next()
    got: list[str | None] = []
    async with trio.open_nursery() as nursery:

        async def reader() -> None:
            got.append(await q.next())

        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        q.put("hello")
    assert got == ["hello"]
