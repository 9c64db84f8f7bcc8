"""The service runs a driver call in its receive task until the call first suspends."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import zmq

from labctl import protocol
from labctl.services import runtime
from labctl.services.config import ServiceConfig
from labctl.services.export import export
from labctl.services.power.mock import MockPower
from labctl.services.runtime import stepped
from labctl.triozmq import TrioSocket

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


class _ScopedPower(MockPower):
    """A power driver with calls that open their own cancel scope before suspending."""

    cancelled: list[float] = []

    @export
    async def scoped(self) -> str:
        try:
            with trio.move_on_after(30):  # entered before the call first suspends
                await trio.sleep(30)
        except trio.Cancelled:
            self.cancelled.append(trio.current_time())
            raise
        return "late"

    @export
    async def quick(self) -> str:
        return "quick"


@trio_test
async def test_a_call_that_opens_a_scope_before_suspending_keeps_its_timeout_and_the_service_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The service's scope for a call is entered before the call runs (its deadline is set
    when the call first suspends), so a driver scope opened in the first step nests inside
    it: the caller's timeout still cancels the call, and receiving goes on meanwhile."""
    monkeypatch.setattr(runtime, "load_driver", lambda kind, driver: _ScopedPower)
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.bind("tcp://127.0.0.1:*")
    broker = TrioSocket(sock)
    cfg = ServiceConfig.model_validate(
        {
            "service": "scoped",
            "kind": "power",
            "driver": "mock",
            "name": "scoped.1",
            "broker": sock.getsockopt_string(zmq.LAST_ENDPOINT),
        }  # fmt: skip
    )
    svc = runtime.ServiceRuntime(cfg)

    async def next_message() -> tuple[bytes, protocol.Message]:
        with trio.fail_after(10):
            frames = await broker.recv()
        return frames[0], protocol.decode(frames[1:])

    def request(rid: int, method: str, timeout: float) -> list[Any]:
        req = protocol.Request(rid, "scoped.1", method, timeout=timeout, body=protocol.EMPTY_ARGS)
        return [ident, *req.to_frames()]

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(svc.run)
            ident, msg = await next_message()
            assert msg.mtype == protocol.REGISTER
            await broker.send([ident, *protocol.Welcome(heartbeat=5.0).to_frames()])
            sent = trio.current_time()
            await broker.send(request(1, "scoped", 0.3))
            await broker.send(request(2, "quick", 5.0))
            while True:  # events (status, online) may come first
                _, msg = await next_message()
                if msg.mtype in (protocol.REPLY, protocol.ERROR):
                    break
            assert (msg.mtype, msg.id, protocol.reply_parts(msg)) == (
                protocol.REPLY,
                2,
                (False, "quick"),
            )
            with trio.fail_after(10):
                while not _ScopedPower.cancelled:
                    await trio.sleep(0.01)
            assert 0.25 <= _ScopedPower.cancelled[0] - sent < 5
            await broker.send(request(3, "quick", 5.0))  # the service still answers
            while True:
                _, msg = await next_message()
                if msg.mtype in (protocol.REPLY, protocol.ERROR):
                    break
            assert (msg.mtype, msg.id) == (protocol.REPLY, 3)  # nothing came for call 1
            nursery.cancel_scope.cancel()
    finally:
        broker.close()
