"""Children that must die with their service (QEMU boards, lab up's broker) must not die
with the trio worker thread that happened to fork them (PR_SET_PDEATHSIG is per thread)."""

from __future__ import annotations

import functools
import signal
import subprocess
import sys
import threading

import pytest
import trio
import trio._core._thread_cache as thread_cache

from labctl.services import child_process, forkserver


def _worker_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("Trio thread"))


@pytest.fixture
def quick_idle_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    # trio's idle worker threads exit after 10 s; here after 50 ms (read on every wait)
    monkeypatch.setattr(thread_cache, "IDLE_TIMEOUT", 0.05)


def test_a_child_outlives_the_trio_worker_threads(quick_idle_threads: None) -> None:
    async def main() -> None:
        await trio.to_thread.run_sync(lambda: None)  # a worker thread exists, then idles
        child = child_process.spawn([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            while _worker_threads():  # the idle worker ends (as it would after 10 s)
                await trio.sleep(0.01)
            with trio.move_on_after(0.3):  # a death signal would land at once: give it time
                await child.wait()
            assert child.returncode is None, "the child died with a worker thread"
        finally:
            child.kill()
            assert await child.wait() == -signal.SIGKILL

    trio.run(main)


def test_the_old_way_dies_with_the_worker_thread(quick_idle_threads: None) -> None:
    """What child_process avoids: the same death signal set in a child trio forks."""

    async def main() -> None:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-c", "import time; time.sleep(60)"],
            preexec_fn=functools.partial(forkserver.die_with_parent, signal.SIGKILL),
        )
        with trio.fail_after(10):
            assert await proc.wait() == -signal.SIGKILL  # killed when the idle thread ended

    trio.run(main)


def test_wait_from_many_tasks_and_a_cancelled_waiter() -> None:
    async def main() -> None:
        child = child_process.spawn(
            [sys.executable, "-c", "import sys; sys.stdin.read(); sys.exit(3)"],
            stdin=subprocess.PIPE,
        )
        results: list[int] = []
        async with trio.open_nursery() as nursery:
            with trio.move_on_after(0.05):  # the first watcher gives up; the others go on
                await child.wait()
            for _ in range(3):
                nursery.start_soon(lambda: _collect(child, results))
            assert child.popen.stdin is not None
            child.popen.stdin.close()
        assert results == [3, 3, 3]
        assert child._pidfd is None  # closed once it exited

    async def _collect(child: child_process.Child, results: list[int]) -> None:
        results.append(await child.wait())

    trio.run(main)
