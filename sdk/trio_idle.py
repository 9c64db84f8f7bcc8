"""Sleeping on one zmq socket without a trip through trio's run loop, when trio is idle.

A message a service or the broker receives otherwise costs a pass through trio's scheduler
before it is handled: register the fd with epoll, epoll_wait, process the event,
reschedule the task, switch to it. Measured here, 10-25 µs of CPU per message, more than
handling a request takes (issue 8.5). When no task is runnable and nothing waits for the
run to go idle, trio's loop would only sleep in epoll_wait until its next deadline anyway.
``idle_poll`` sleeps in zmq_poll instead, on the socket and on trio's own epoll fd, until
that deadline. The epoll fd is readable as soon as anything trio waits on is ready: other
sockets and pipes, child processes (pidfd), and the wake-up socket that ``run_sync_soon``,
worker threads and signals write to. A message on the socket is then handled right away,
in the task; anything else goes back through trio at once.

Measured with bench/rpc.py's A/B (the service and the broker both using it): CPU per RPC
7-14 % lower, p50 7-16 % lower, the larger gains on a loaded machine.

trio has no public API for "is the run idle": the runner's run queue and tasks (a task
rescheduled in the batch being run is only marked by its pending value), deadlines, clock,
instruments and epoll object, and whether the current task has a cancel pending, are read
here, and only here. Where they are not what this
module expects (another trio, an OS without epoll, guest mode, a test clock, an
instrument watching I/O waits) the fast path is off and everything waits through trio as
before. ``LABCTL_TRIO_IDLE_POLL=0`` turns it off too. ``tests/test_trio_idle.py`` fails if
an upgrade of trio switches it off unnoticed.
"""

from __future__ import annotations

import math
import os
from typing import Any

import zmq

try:  # trio internals: checked once, here
    from trio._core._io_epoll import EpollIOManager
    from trio._core._run import GLOBAL_RUN_CONTEXT, SystemClock

    _INTERNALS = True
except ImportError:  # pragma: no cover - another trio or another OS
    _INTERNALS = False

#: ``idle_poll`` verdicts
SKIPPED = 0  # trio is not idle (or the fast path is off): wait through trio as usual
READY = 1  # a message is waiting on the socket and nothing else happened
WOKE = 2  # something else needs trio (I/O, a thread, a signal, a deadline): checkpoint

_poll = zmq.backend.zmq_poll
_POLLIN = int(zmq.POLLIN)
_WANTED = ("runq", "tasks", "deadlines", "clock", "instruments", "waiting_for_idle",
           "io_manager", "is_guest", "clock_autojump_threshold")  # fmt: skip


def _enabled() -> bool:
    return _INTERNALS and os.environ.get("LABCTL_TRIO_IDLE_POLL") != "0"


ENABLED = _enabled()


def available() -> bool:
    """Whether this trio run can take the fast path (call it inside ``trio.run``)."""
    return _runner() is not None


def _runner() -> Any:
    """The current trio runner if the fast path can read it, else None."""
    if not ENABLED:
        return None
    runner = getattr(GLOBAL_RUN_CONTEXT, "runner", None)
    if runner is None or not all(hasattr(runner, name) for name in _WANTED):
        return None
    io = runner.io_manager
    if type(io) is not EpollIOManager or not hasattr(io, "_epoll"):
        return None
    if type(runner.clock) is not SystemClock or runner.is_guest:
        return None  # (only a MockClock moves clock_autojump_threshold off infinity)
    task = getattr(GLOBAL_RUN_CONTEXT, "task", None)
    if not hasattr(task, "_next_send_fn") or not hasattr(
        getattr(task, "_cancel_status", None), "effectively_cancelled"
    ):
        return None
    return runner


#: beyond this many tasks the scan for runnable ones costs more than the fast path saves
_MAX_TASKS = 64


def _runnable(tasks: Any, current: Any) -> bool:
    """Whether a task other than ``current`` waits to run. The run queue does not say it
    all: trio moves it into a batch before running the batch's tasks one by one, and the
    ones still to come in the current batch are only marked by a pending value to send."""
    for task in tasks:  # noqa: SIM110 - a loop: any() over a generator costs twice as much
        if task._next_send_fn is not None and task is not current:
            return True
    return False


#: the runner last seen and its epoll fd, -1 if the fast path cannot read that run (one
#: trio run per thread at a time)
_last: tuple[Any, int] = (None, -1)


def idle_poll(sock: zmq.Socket[Any]) -> int:
    """If trio is idle, sleep until ``sock`` has a message or trio has something to do.

    Call it only where the task would otherwise wait for ``sock`` to be readable, right
    after reading EVENTS found nothing (zmq_poll reads EVENTS last too, so the socket's
    edge stays armed). A task whose scope was cancelled does not sleep here: the cancel
    is delivered at its next checkpoint, which must come first.

    ``SKIPPED``: wait through trio; ``READY``: receive now, without a checkpoint (the run
    was idle: nobody else wants the thread); ``WOKE``: go through trio (``await
    trio.lowlevel.checkpoint()``), then look at the socket again.
    """
    global _last
    if not ENABLED:
        return SKIPPED
    runner, epfd = _last
    current: Any = GLOBAL_RUN_CONTEXT.__dict__.get("runner")
    if runner is not current:  # a new run: can the fast path read it? (asked once per run)
        readable = _runner()
        runner, epfd = current, -1 if readable is None else readable.io_manager._epoll.fileno()
        _last = (runner, epfd)
    if epfd < 0:
        return SKIPPED
    if (
        runner.runq
        or len(runner.tasks) > _MAX_TASKS
        or _runnable(runner.tasks, GLOBAL_RUN_CONTEXT.task)
        or runner.waiting_for_idle
        or "before_io_wait" in runner.instruments  # instruments come and go during a run
        # a cancel is delivered at the next checkpoint, which must come first (one read:
        # current_effective_deadline() walks the whole scope chain, 30 calls)
        or GLOBAL_RUN_CONTEXT.task._cancel_status.effectively_cancelled
    ):
        return SKIPPED
    timeout = runner.clock.deadline_to_sleep_time(runner.deadlines.next_deadline())
    if timeout < 0.002:
        return SKIPPED  # a deadline is (nearly) due: let trio handle it
    ms = -1 if timeout == math.inf else int(timeout * 1000)  # rounded down: never late
    ready = _poll([(sock, _POLLIN), (epfd, _POLLIN)], ms)
    if len(ready) == 1 and ready[0][0] is sock:
        return READY
    return WOKE
