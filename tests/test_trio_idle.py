"""The idle fast path (``labctl.trio_idle``): a socket read without a pass through trio's
scheduler while trio is idle, and everything else trio waits for still wakes it.

Each test would fail (hang past its deadline or time out) if ``idle_poll`` slept only on
the zmq socket: timers, worker threads, other fds, signals and ``wait_all_tasks_blocked``
must all get the thread back promptly.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
import zmq

import labctl.triozmq
from labctl import trio_idle
from labctl.triozmq import TrioSocket

from .harness import trio_test

pytestmark = pytest.mark.timeout(30)  # a broken fast path hangs the thread: fail, not stall


def _later(seconds: float, fn: Callable[[], Any]) -> threading.Thread:
    """Run ``fn`` in a thread after ``seconds`` (what wakes the run: not trio's doing)."""
    thread = threading.Thread(target=lambda: (time.sleep(seconds), fn()), daemon=True)
    thread.start()
    return thread


class Receiver:
    """A PULL socket read the way the service's receive loop reads it (recv_nowait, then
    wait_readable), its PUSH peer, what it got, and every verdict ``idle_poll`` gave."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        ctx = zmq.Context.instance()
        pull = ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.LINGER, 0)
        pull.bind("tcp://127.0.0.1:*")
        self.push = ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.connect(pull.getsockopt_string(zmq.LAST_ENDPOINT))
        self.sock, self.got, self.verdicts = TrioSocket(pull), [], []

        def recording(sock: zmq.Socket[Any]) -> int:
            verdict = trio_idle.idle_poll(sock)
            self.verdicts.append(verdict)
            return verdict

        monkeypatch.setattr(labctl.triozmq, "idle_poll", recording)

    async def loop(self) -> None:
        while True:
            frames = self.sock.recv_nowait()
            if frames is None:
                await self.sock.wait_readable()
                continue
            self.got.extend(frames)

    def nudge_soon(self) -> None:
        """A message in 20 ms, from a thread: the loop takes it, then (the run otherwise
        idle, the test's task waiting on what it tests) sleeps in zmq_poll."""
        _later(0.02, lambda: self.push.send(b"nudge"))

    def slept_and_woke(self) -> bool:
        """The loop got the nudge, then slept in zmq_poll until something else woke it."""
        return self.got == [b"nudge"] and trio_idle.WOKE in self.verdicts


@asynccontextmanager
async def receiving(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Receiver]:
    r = Receiver(monkeypatch)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(r.loop)
            await trio.testing.wait_all_tasks_blocked()  # the loop sleeps on the socket
            yield r
            nursery.cancel_scope.cancel()
    finally:
        r.push.close()
        r.sock.close()


@trio_test
async def test_the_fast_path_is_available_with_this_trio() -> None:
    # if a trio upgrade moves what trio_idle reads, this fails instead of RPCs slowing
    assert trio_idle.ENABLED and trio_idle.available()


@trio_test
async def test_an_idle_run_gets_a_message_without_trio() -> None:
    ctx = zmq.Context.instance()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    try:
        pull.bind("inproc://trio-idle-ready")
        push.connect("inproc://trio-idle-ready")
        assert pull.poll(0) == 0  # EVENTS read: the edge is armed, as idle_poll expects
        await trio.testing.wait_all_tasks_blocked()  # trio's own tasks have started
        t0 = time.monotonic()
        sender = _later(0.05, lambda: push.send(b"hello"))
        assert trio_idle.idle_poll(pull) == trio_idle.READY
        assert time.monotonic() - t0 >= 0.04 and pull.recv(zmq.NOBLOCK) == b"hello"
        sender.join()
    finally:
        pull.close(0)
        push.close(0)


@trio_test
async def test_a_due_timer_wakes_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    async with receiving(monkeypatch) as r:
        r.nudge_soon()
        t0 = trio.current_time()
        await trio.sleep(0.2)
        assert trio.current_time() - t0 < 1.0 and r.slept_and_woke()


@trio_test
async def test_a_worker_thread_wakes_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    async with receiving(monkeypatch) as r:
        r.nudge_soon()
        t0 = time.monotonic()
        await trio.to_thread.run_sync(time.sleep, 0.2)
        assert time.monotonic() - t0 < 1.0 and r.slept_and_woke()


@trio_test
async def test_another_fd_wakes_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = socket.socketpair()
    try:
        async with receiving(monkeypatch) as r:
            r.nudge_soon()
            t0 = time.monotonic()
            _later(0.2, lambda: b.send(b"x"))
            await trio.lowlevel.wait_readable(a)
            assert time.monotonic() - t0 < 1.0 and r.slept_and_woke()
    finally:
        a.close()
        b.close()


@trio_test
async def test_a_signal_wakes_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    with trio.open_signal_receiver(signal.SIGUSR1) as signals:
        async with receiving(monkeypatch) as r:
            r.nudge_soon()
            t0 = time.monotonic()
            _later(0.2, lambda: os.kill(os.getpid(), signal.SIGUSR1))
            assert await signals.__anext__() == signal.SIGUSR1
            assert time.monotonic() - t0 < 1.0 and r.slept_and_woke()


@trio_test
async def test_an_idle_waiter_is_woken_when_all_tasks_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with receiving(monkeypatch) as r:
        r.nudge_soon()
        t0 = time.monotonic()
        while r.got != [b"nudge"]:  # polls, so the run is never idle while it waits
            await trio.sleep(0.005)
        await trio.testing.wait_all_tasks_blocked(0.05)
        assert time.monotonic() - t0 < 1.0


@trio_test
async def test_the_waiting_task_is_cancelled_at_its_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with receiving(monkeypatch) as r:
        t0 = trio.current_time()
        with trio.move_on_after(0.2):
            await r.loop()  # a second reader: it sleeps on trio's fd wait, the first in line
        assert trio.current_time() - t0 < 1.0


@trio_test
async def test_a_task_cancelled_before_it_waits_does_not_sleep() -> None:
    pull = zmq.Context.instance().socket(zmq.PULL)
    try:
        pull.bind("inproc://trio-idle-cancelled")
        await trio.testing.wait_all_tasks_blocked()  # nobody else to run: the fast path's case
        with trio.CancelScope() as scope:
            scope.cancel()  # pending until this task's next checkpoint, which must come first
            assert trio_idle.idle_poll(pull) == trio_idle.SKIPPED  # not a sleep until a message
            await TrioSocket(pull).wait_readable()
        assert scope.cancelled_caught
    finally:
        pull.close(0)


@trio_test
async def test_messages_keep_coming_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    async with receiving(monkeypatch) as r:
        sender = threading.Thread(target=lambda: [r.push.send(b"%d" % i) for i in range(2000)])
        sender.start()  # only that thread touches push meanwhile: pyzmq is not thread safe
        with trio.fail_after(10):
            while len(r.got) < 2000:
                await trio.sleep(0.01)
        sender.join()
        assert r.got == [b"%d" % i for i in range(2000)]
        assert trio_idle.READY in r.verdicts or trio_idle.WOKE in r.verdicts


@trio_test
async def test_switched_off_it_waits_through_trio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trio_idle, "ENABLED", False)  # LABCTL_TRIO_IDLE_POLL=0
    assert not trio_idle.available()
    pull = zmq.Context.instance().socket(zmq.PULL)
    try:
        pull.bind("inproc://trio-idle-off")
        assert trio_idle.idle_poll(pull) == trio_idle.SKIPPED
    finally:
        pull.close(0)


def test_the_switch_is_read_from_the_environment() -> None:
    import subprocess
    import sys

    code = "import labctl.trio_idle as t; print(t.ENABLED)"
    env = dict(os.environ, LABCTL_TRIO_IDLE_POLL="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False"
