"""The python-can bus used from two threads: one blocked in ``recv()`` on a quiet bus, the
other changing filters or shutting the bus down. Real broker, real CAN service."""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import can
import pytest

from ..harness import LabHarness, wait_until

#: how long set_filters / shutdown may take while another thread waits in recv
PROMPT = 1.0


class Reader:
    """A thread calling ``bus.recv()`` (no timeout) until it raises; what it got, in order,
    goes to ``got`` (messages, then the exception that ended it)."""

    def __init__(self, bus: can.BusABC) -> None:
        self.bus = bus
        self.got: queue.Queue[Any] = queue.Queue()
        self.entered = threading.Event()
        self.thread = threading.Thread(target=self._run, name="can-reader", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            self.entered.set()
            try:
                msg = self.bus.recv()
            except Exception as exc:
                self.got.put(exc)
                return
            self.got.put(msg)

    def waiting_in_recv(self) -> bool:
        """The thread is inside ``_recv_internal`` right now (its stack says so)."""
        frame = sys._current_frames().get(self.thread.ident or -1)
        while frame is not None:
            if frame.f_code.co_name == "_recv_internal":
                return True
            frame = frame.f_back
        return False

    def wait_blocked(self) -> None:
        assert self.entered.wait(5), "the reader never called recv"
        wait_until(self.waiting_in_recv, 5, "the reader to wait inside recv")
        assert self.got.empty(), "the bus was meant to be quiet"


def in_thread(fn: Any, *args: Any) -> tuple[threading.Event, list[float]]:
    """Run ``fn(*args)`` in a daemon thread (if it hangs, the test fails instead of
    hanging); the Event is set when it returned, the list holds how long it took."""
    done, took = threading.Event(), []

    def run() -> None:
        t0 = time.monotonic()
        fn(*args)
        took.append(time.monotonic() - t0)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done, took


@pytest.fixture
def bus_b(can_lab: LabHarness) -> Iterator[can.BusABC]:
    bus = can.Bus(interface="labctl", channel="can-b", broker=can_lab.bus, receive_only=True)
    try:
        yield bus
    finally:
        bus.shutdown()


def test_set_filters_returns_at_once_while_another_thread_waits_in_recv(
    can_lab: LabHarness, bus_b: can.BusABC
) -> None:
    reader = Reader(bus_b)
    reader.wait_blocked()
    lab = can_lab.lab()
    with lab.lease("name=can-a") as lease:
        done, took = in_thread(bus_b.set_filters, [{"can_id": 0x100, "can_mask": 0x700}])
        prompt = done.wait(PROMPT)
        if not prompt:  # unblock the reader (no filters yet: any frame does), then fail
            lease.can.send(0x7FF, b"")
            done.wait(10)
        assert prompt, f"set_filters waited behind recv() ({took or 'still waiting'})"
        # the reader waits on with the new filters: 0x200 is dropped by the service
        lease.can.send(0x200, b"\x02")
        lease.can.send(0x123, b"\x01")
        msg = reader.got.get(timeout=5)
    assert isinstance(msg, can.Message), msg
    assert (msg.arbitration_id, bytes(msg.data)) == (0x123, b"\x01")
    reader.wait_blocked()  # and goes back to waiting; nothing else came
    bus_b.shutdown()
    reader.thread.join(PROMPT)
    assert not reader.thread.is_alive()
    assert isinstance(reader.got.get_nowait(), can.CanOperationError)


def test_shutdown_while_another_thread_waits_in_recv_ends_that_recv(
    bus_b: can.BusABC,
) -> None:
    reader = Reader(bus_b)
    reader.wait_blocked()
    done, took = in_thread(bus_b.shutdown)
    assert done.wait(PROMPT), f"shutdown waited behind recv() ({took or 'still waiting'})"
    reader.thread.join(PROMPT)
    assert not reader.thread.is_alive(), "recv() went on waiting on a shut-down bus"
    ended = reader.got.get_nowait()
    assert isinstance(ended, can.CanOperationError) and "shut down" in str(ended)
    with pytest.raises(can.CanOperationError, match="shut down"):
        bus_b.recv(0)


def test_recv_with_a_timeout_on_a_quiet_bus_keeps_to_it(bus_b: can.BusABC) -> None:
    t0 = time.monotonic()
    assert bus_b.recv(0.3) is None
    assert 0.3 <= time.monotonic() - t0 < 0.3 + 0.5
    assert bus_b.recv(0) is None
