"""Streams through the broker with the serial service on real ptys and simdut."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import tty
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from labctl.errors import DeviceBusy, LeaseRequired, StreamRefused

from .harness import LabHarness, wait_until


class Pty:
    """A pty whose slave path the serial service opens; the test plays the board."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)

    def write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.master, view[:65536]) :]

    def read_exactly(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            out += os.read(self.master, n - len(out))
        return bytes(out)

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def pty() -> Iterator[Pty]:
    p = Pty()
    yield p
    p.close()


def serial_service(
    name: str, url: str, dut: str = "rpi4-01", **config: object
) -> dict[str, object]:
    return {"service": name, "kind": "serial", "driver": "pyserial", "labels": {"dut": dut, "board": "rpi4"},
            "config": {"url": url, **config}}  # fmt: skip


@pytest.fixture
def serial_lab(harness: LabHarness, pty: Pty) -> LabHarness:
    harness.start_broker()
    harness.start_service(serial_service("ser1", pty.path, scrollback=8 << 20))
    return harness


def test_console_carries_bytes_both_ways(serial_lab: LabHarness, pty: Pty) -> None:
    with serial_lab.lab().lease("dut=rpi4-01") as lease, lease.serial.stream("console") as stream:
        pty.write_all(b"hello from the board\r\n")
        got = b""
        while b"\n" not in got:
            got += stream.read_some(5)
        assert got == b"hello from the board\r\n"
        payload = os.urandom(256 * 1024)
        stream.write(payload)
        assert pty.read_exactly(len(payload)) == payload


def test_64_mib_through_a_console_stream_arrive_intact(serial_lab: LabHarness, pty: Pty) -> None:
    data = os.urandom(64 << 20)
    lab = serial_lab.lab()
    with lab.device("ser1").stream("console") as stream:
        wait_until(lambda: lab.device("ser1").status()["streams"] == 1, 5, "the stream to open")
        writer = threading.Thread(target=pty.write_all, args=(data,))
        writer.start()
        digest, n = hashlib.sha256(), 0
        while n < len(data):
            chunk = stream.read_some(10)
            digest.update(chunk)
            n += len(chunk)
        writer.join()
    assert n == len(data) and stream.gaps == 0
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_stalled_reader_slows_only_its_own_stream(serial_lab: LabHarness, pty: Pty) -> None:
    lab = serial_lab.lab()
    assert serial_lab.broker is not None
    rss_before = _rss_kb(serial_lab.broker.pid)
    stalled = lab.device("ser1").stream("console")  # opened, never read
    with lab.device("ser1").stream("console") as live:
        wait_until(lambda: lab.device("ser1").status()["streams"] == 2, 5, "both streams")
        data = os.urandom(32 << 20)
        writer = threading.Thread(target=pty.write_all, args=(data,))
        writer.start()
        digest, n = hashlib.sha256(), 0
        while n < len(data):
            chunk = live.read_some(10)
            digest.update(chunk)
            n += len(chunk)
        writer.join()
        assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert _rss_kb(serial_lab.broker.pid) - rss_before < 16 * 1024  # credit bounds what it holds
    # the stalled stream got what its credit allowed, then a gap notice for what it missed
    first = stalled.read_some(5)
    assert 0 < len(first) <= 1 << 20
    while stalled.gaps == 0:
        stalled.read_some(5)
    stalled.close()


def test_readers_are_many_writer_needs_the_lease_and_is_cut_off_when_it_ends(
    serial_lab: LabHarness, pty: Pty
) -> None:
    a, b = serial_lab.lab(), serial_lab.lab()
    with pytest.raises(LeaseRequired):
        a.device("ser1").stream("console", write=True)
    readers = [b.device("ser1").stream("console") for _ in range(3)]
    lease = a.lease("dut=rpi4-01")
    writer = lease.serial.stream("console")
    with pytest.raises(DeviceBusy):
        b.device("ser1").stream("console", write=True)
    writer.write(b"typed\n")
    assert pty.read_exactly(6) == b"typed\n"
    pty.write_all(b"seen by all\n")
    for r in readers:
        got = b""
        while len(got) < 12:
            got += r.read_some(5)
        assert got == b"seen by all\n"
    with pytest.raises(StreamRefused):
        readers[0].write(b"x")
    lease.release()
    while writer.read_some(5):
        pass
    assert "lease ended" in str(writer.closed_reason)
    for s in [writer, *readers]:
        s.close()


def test_the_far_end_dying_closes_the_stream_with_a_reason(harness: LabHarness, pty: Pty) -> None:
    harness.start_broker()
    svc = harness.start_service(serial_service("ser2", pty.path))
    lab = harness.lab()
    stream = lab.device("ser2").stream("console", resume=0)
    svc.kill(signal.SIGKILL)
    while stream.read_some(10):
        pass
    assert "service went away" in str(stream.closed_reason)


CLIENT = """
import sys
from labctl.lab import Lab
lab = Lab(sys.argv[1])
stream = lab.device("ser1").stream("console")
print("open", flush=True)
sys.stdin.read()
"""


def test_a_killed_client_frees_its_stream_on_the_service(serial_lab: LabHarness, pty: Pty) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CLIENT, serial_lab.bus],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
        lab = serial_lab.lab()
        assert lab.device("ser1").status()["streams"] == 1
        proc.kill()
        proc.wait()
        pty.write_all(b"x" * 4096)  # the broker learns the client is gone when it forwards
        wait_until(
            lambda: lab.device("ser1").status()["streams"] == 0, 10, "the stream to be dropped"
        )
    finally:
        proc.kill()
        proc.wait()


def test_reader_resumes_at_its_offset_after_a_broker_restart(
    serial_lab: LabHarness, pty: Pty
) -> None:
    lab = serial_lab.lab()
    stream = lab.device("ser1").stream("console", since=0)
    lines = [f"line {i:05d}\n".encode() for i in range(3000)]
    pty.write_all(b"".join(lines[:1000]))
    got = bytearray()
    while len(got) < 11000:
        got += stream.read_some(10)
    assert serial_lab.broker is not None
    serial_lab.broker.kill(signal.SIGKILL)
    pty.write_all(b"".join(lines[1000:2000]))  # written while no broker runs
    serial_lab.start_broker()
    pty.write_all(b"".join(lines[2000:]))
    expected = b"".join(lines)
    while len(got) < len(expected):
        got += stream.read_some(20)
    assert bytes(got) == expected  # nothing lost, nothing doubled
    stream.close()


def test_async_reader_resumes_at_its_offset_after_a_broker_restart(
    serial_lab: LabHarness, pty: Pty
) -> None:
    import trio

    from labctl.aio import AsyncLab

    lines = [f"line {i:05d}\n".encode() for i in range(3000)]
    expected = b"".join(lines)

    async def main() -> None:
        async with AsyncLab(serial_lab.bus) as lab:
            dev = await lab.device("ser1")
            async with dev.stream("console", since=0) as stream:
                pty.write_all(b"".join(lines[:1000]))
                got = bytearray()
                while len(got) < 11000:
                    got += await stream.read_some(10)
                assert serial_lab.broker is not None
                serial_lab.broker.kill(signal.SIGKILL)
                pty.write_all(b"".join(lines[1000:2000]))  # written while no broker runs
                await trio.to_thread.run_sync(serial_lab.start_broker)
                pty.write_all(b"".join(lines[2000:]))
                while len(got) < len(expected):
                    got += await stream.read_some(20)
                assert bytes(got) == expected  # nothing lost, nothing doubled

    trio.run(main)


def test_console_expect_against_a_booting_simulated_dut(harness: LabHarness) -> None:
    link = harness.root / "tty-dut"
    power = harness.root / "power"
    sim = subprocess.Popen([sys.executable, "-m", "labctl.services.simulators.simdut", "--link", str(link),
                            "--power-file", str(power)], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert sim.stdout is not None and "simdut ready" in sim.stdout.readline()
        harness.start_broker()
        harness.start_service(serial_service("dut-console", str(link)))
        harness.start_service({"service": "dut-power", "kind": "power", "driver": "mock",
                               "labels": {"dut": "rpi4-01"}, "config": {"state_file": str(power)}})  # fmt: skip
        with harness.lab().lease("dut=rpi4-01") as lease:
            con = lease.serial.console()
            lease.power.on()
            con.expect("login:", timeout=20)
            assert "Starting kernel" in con.before or "U-Boot" in con.before
            con.sendline("root")
            con.expect_exact("# ", timeout=10)
            con.sendline("uname -a")
            con.expect(r"Linux \S+ .*aarch64", timeout=10)
            with pytest.raises(pexpect.TIMEOUT):
                con.expect("never printed", timeout=0.3)
            assert b"aarch64" in lease.serial.log(tail=4096)["data"]
            con.close()
    finally:
        sim.terminate()
        sim.wait(10)


def test_port_unplugged_and_back_is_published(harness: LabHarness) -> None:
    link = harness.root / "tty-plug"
    argv = [sys.executable, "-m", "labctl.services.simulators.simdut", "--link", str(link)]
    sim = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert sim.stdout is not None and "simdut ready" in sim.stdout.readline()
        harness.start_broker()
        harness.start_service(serial_service("plug-console", str(link), reconnect_interval=0.1))
        lab = harness.lab()
        with lab.event_stream("device.plug-console.*") as events:
            sim.kill()
            sim.wait()
            events.wait_for("device.plug-console.online", lambda b: b["online"] is False)
            assert lab.devices("name=plug-console")[0]["online"] is False
            sim = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
            events.wait_for("device.plug-console.online", lambda b: b["online"] is True)
            assert lab.devices("name=plug-console")[0]["status"]["port"] == "connected"
    finally:
        sim.terminate()
        sim.wait(10)


def test_many_tiny_writes_within_credit_and_a_close_that_stays_closed(
    serial_lab: LabHarness, pty: Pty
) -> None:
    lab = serial_lab.lab()
    with lab.lease("dut=rpi4-01") as lease:
        stream = lease.serial.stream("console")
        for _ in range(500):
            stream.write(b"k")
        assert pty.read_exactly(500) == b"k" * 500
        for _ in range(50):
            stream.write(b"z")
        stream.close()  # with writes still in flight
        assert pty.read_exactly(50) == b"z" * 50
        wait_until(lambda: lab.device("ser1").status()["streams"] == 0, 5, "the stream to end")
        pty.write_all(b"after close\n")
        assert lab.device("ser1").status()["streams"] == 0  # nothing reopened behind our back
