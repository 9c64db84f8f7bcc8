"""Write access to a stream lasts only as long as the rule that allowed it (PROTOCOL.md §8,
§9), with a real broker and mock serial services: an admin's console forced open on a
device in maintenance is closed when maintenance ends, a lease holder's console when its
device enters maintenance; read-only tails and other devices' writers stay open."""

from __future__ import annotations

import time
from typing import Any

import pytest
import zmq

from labctl import protocol
from labctl.errors import StreamClosed
from labctl.streams import ByteStream

from .harness import LabHarness, wait_until

REVOKED = "maintenance ended: forced write access revoked"


def console_service(name: str, dut: str) -> dict[str, object]:
    return {"service": name, "kind": "serial", "driver": "mock", "labels": {"dut": dut}}


class ForcedWriter:
    """A raw client writing to a console by force (``force`` in STREAM-OPEN, no lease), as
    an admin debugging a device in maintenance does; it grants no read credit, so what it
    hears are credits and closes."""

    def __init__(self, bus: str, device: str, reason: str) -> None:
        self.sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(bus)
        self.sid: int | None = None
        req = protocol.StreamOpen(1, device, "console", True, None, {}, 0, None, reason)
        self.sock.send_multipart(req.to_frames())
        reply = self._next(lambda m: m.mtype in (protocol.REPLY, protocol.ERROR))
        assert reply.mtype == protocol.REPLY, reply.header
        self.sid = protocol.Reply.parse(reply).result["sid"]

    def _next(self, wanted: Any, timeout: float = 5.0) -> protocol.Message:
        """The first message ``wanted`` takes; the broker's liveness pings (STREAM-CREDIT
        0) are answered as the SDK does, so the route is not closed as silent."""
        deadline = time.monotonic() + timeout
        while self.sock.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            msg = protocol.decode(self.sock.recv_multipart())
            if wanted(msg):
                return msg
            if msg.mtype == protocol.STREAM_CREDIT and msg.sid == self.sid:
                self.sock.send_multipart(protocol.StreamCredit(msg.sid, 0).to_frames())
        raise AssertionError(f"nothing wanted arrived within {timeout}s")

    def write(self, data: bytes) -> None:
        self.sock.send_multipart(protocol.StreamData(self.sid, [data]).to_frames())

    def next_close(self, timeout: float = 5.0) -> protocol.StreamClose:
        def close(m: protocol.Message) -> bool:
            return m.mtype == protocol.STREAM_CLOSE and m.sid == self.sid

        return protocol.StreamClose.parse(self._next(close, timeout))

    def close(self) -> None:
        self.sock.close()


def read_until(stream: ByteStream, needle: bytes, timeout: float = 5.0) -> bytes:
    """What ``stream`` read up to and including ``needle`` (TimeoutError if it never came)."""
    got = b""
    while needle not in got:
        data = stream.read_some(timeout)
        assert data, f"{stream.closed_reason}; read {got!r}"
        got += data
    return got


@pytest.fixture
def consoles(harness: LabHarness) -> LabHarness:
    """Two consoles of two boards (groups): con1 (dut b1) and con2 (dut b2)."""
    harness.start_broker()
    harness.start_service(console_service("con1", "b1"))
    harness.start_service(console_service("con2", "b2"))
    return harness


def test_a_forced_console_is_closed_when_maintenance_ends_and_tails_stay_open(
    consoles: LabHarness,
) -> None:
    admin, user = consoles.lab(), consoles.lab()
    admin.set_health("con1", "maintenance", "rewiring")
    other = user.lease("dut=b2")  # a writer on another board, which stays open throughout
    other_writer = other.serial.stream("console")
    tail = user.device("con1").stream("console")
    forced = ForcedWriter(consoles.bus, "con1", "typing at u-boot")
    try:
        forced.write(b"forced\n")
        read_until(tail, b"forced\n")
        admin.set_health("con1", "maintenance", "still rewiring")  # still maintenance: kept
        forced.write(b"still\n")
        read_until(tail, b"still\n")

        admin.set_health("con1", "good")
        close = forced.next_close()
        assert close.reason == REVOKED
        assert isinstance(close.error, StreamClosed) and close.error.code == "stream-closed"
        forced.write(b"late\n")  # the route is gone: the broker drops it and says so
        assert forced.next_close().unknown

        # the device goes to its next holder; nothing of the admin's reaches it
        with user.lease("dut=b1") as lease, lease.serial.stream("console") as writer:
            writer.write(b"user\n")
            seen = read_until(tail, b"user\n")
            assert b"late" not in seen
            assert tail.closed_reason is None  # the tail never closed
        other_writer.write(b"two\n")
        read_until(other_writer, b"two\n")
        assert other_writer.closed_reason is None
    finally:
        forced.close()
        tail.close()
        other_writer.close()
        other.release()


def test_leaving_maintenance_for_bad_revokes_a_forced_console_too(consoles: LabHarness) -> None:
    admin = consoles.lab()
    admin.set_health("con1", "maintenance", "rewiring")
    forced = ForcedWriter(consoles.bus, "con1", "typing at u-boot")
    try:
        admin.set_health("con1", "bad", "relay is dead")
        assert forced.next_close().reason == REVOKED
    finally:
        forced.close()


def test_a_lease_holders_console_is_closed_when_its_device_enters_maintenance(
    consoles: LabHarness,
) -> None:
    admin, user = consoles.lab(), consoles.lab()
    lease, other = user.lease("dut=b1"), user.lease("dut=b2")
    console = lease.serial.console()
    other_writer = other.serial.stream("console")
    tail = admin.device("con1").stream("console")
    try:
        console.sendline("hello")
        read_until(tail, b"hello\n")
        admin.set_health("con1", "maintenance", "rewiring")

        def refused() -> StreamClosed | None:
            try:
                console.send("x")  # a write takes in the close that came meanwhile
            except StreamClosed as exc:
                return exc
            return None

        err = wait_until(refused, 5, "the writer to hear its stream was closed")
        assert "device in maintenance (rewiring): write access revoked" in str(err)
        assert "\n" not in str(err)
        assert tail.closed_reason is None
        other_writer.write(b"two\n")  # another board's writer is untouched
        read_until(other_writer, b"two\n")
    finally:
        console.close()
        tail.close()
        other_writer.close()
        lease.release()
        other.release()
