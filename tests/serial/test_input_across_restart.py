"""Keystrokes typed while the broker is away arrive once it is back, in order, once
(issue 9.11): a real broker killed and restarted, a serial service on a pty."""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from ..harness import LabHarness
from ..test_streams import Pty, serial_service


@pytest.fixture
def pty() -> Iterator[Pty]:
    p = Pty()
    yield p
    p.close()


def _read_until(pty: Pty, want: bytes, timeout: float) -> bytes:
    """What the board (the pty) receives, until it ends with ``want`` or time is up."""
    got = bytearray()
    deadline = time.monotonic() + timeout
    while not got.endswith(want):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([pty.master], [], [], left)[0]:
            break
        got += os.read(pty.master, 4096)
    return bytes(got)


def test_keys_typed_while_the_broker_is_down_arrive_once_it_is_back(
    harness: LabHarness, pty: Pty
) -> None:
    harness.start_broker()
    harness.start_service(serial_service("ser1", pty.path))
    lab = harness.lab()
    with lab.lease("dut=rpi4-01") as lease, lease.serial.console() as con:
        con.sendline("one")
        assert _read_until(pty, b"one\n", 10) == b"one\n"
        assert harness.broker is not None
        harness.broker.kill(signal.SIGKILL)
        con.sendline("two")  # no broker: kept until the service confirms it
        con.sendline("three")
        harness.start_broker()
        board: dict[str, bytes] = {}

        def play_the_board() -> None:
            board["got"] = _read_until(pty, b"two\nthree\n", 45)
            pty.write_all(b"ok\r\n")

        t = threading.Thread(target=play_the_board)
        t.start()
        try:
            con.expect_exact("ok", timeout=60)  # reading drives the reopen and the resend
        finally:
            t.join(60)
        assert board["got"] == b"two\nthree\n"  # in order, nothing lost, nothing twice
        con.sendline("four")
        assert _read_until(pty, b"four\n", 10) == b"four\n"
