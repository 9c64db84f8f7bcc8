"""Services in separate processes on one python-can ``udp_multicast`` bus, inside a network
namespace this test creates (multicast stays on its loopback; no kernel CAN needed), and a
simulated ECU answering UDS ReadDataByIdentifier over ISO-TP with a 4 KiB payload.

The broker and clients stay in the host namespace: the bus is ipc://, a path on the file
system, which every namespace reaches.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import can
import isotp
import pytest

from ..harness import LabHarness, Proc, wait_until
from .ecu import BIG

GROUP = "239.74.163.2"


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace with multicast routed on its loopback."""
    name = f"lc-can-{os.getpid()}-{time.monotonic_ns() % 100000}"
    made = _ip("netns", "add", name)
    if made.returncode != 0:
        pytest.skip(
            f"cannot create a network namespace (needs root and ip netns): {made.stderr.strip()}"
        )
    try:
        for cmd in (["link", "set", "lo", "up"], ["link", "set", "lo", "multicast", "on"],
                    ["route", "add", "239.0.0.0/8", "dev", "lo"]):  # fmt: skip
            done = _ip("netns", "exec", name, "ip", *cmd)
            assert done.returncode == 0, done.stderr
        yield name
    finally:
        _ip("netns", "del", name)


def _udp_service(name: str) -> dict[str, object]:
    return {"service": name, "kind": "can", "driver": "python-can",
            "config": {"interface": "udp_multicast", "channel": GROUP, "fd": True}}  # fmt: skip


@pytest.fixture
def udp_lab(harness: LabHarness, netns: str) -> Iterator[LabHarness]:
    """Broker on the host; services can-u1 and can-u2 and an ECU inside the namespace."""
    harness.start_broker()
    inside = ["ip", "netns", "exec", netns]
    for name in ("can-u1", "can-u2"):
        path = harness.write_config(_udp_service(name))
        proc = Proc([*inside, sys.executable, "-m", "labctl.cli", "service", "run", str(path)],
                    harness.root / f"{name}.log", harness.env).start()  # fmt: skip
        harness.procs.append(proc)
    harness.wait_online(["can-u1", "can-u2"])
    ecu = Proc([*inside, sys.executable, "-m", "tests.can.ecu", "--channel", GROUP],
               harness.root / "ecu.log", {**harness.env, "PYTHONPATH": os.getcwd()}).start()  # fmt: skip
    harness.procs.append(ecu)
    wait_until(lambda: "ready" in ecu.output(), 15, "the ECU to listen")
    harness.ecu = ecu  # type: ignore[attr-defined]
    yield harness


def test_frames_cross_between_two_services_on_udp_multicast(udp_lab: LabHarness) -> None:
    lab = udp_lab.lab()
    with (
        lab.device("can-u2").frames([{"id": 0x100, "mask": 0x700}]) as frames,
        lab.lease("name=can-u1") as lease,
    ):
        for ident in (0x101, 0x201, 0x1AB):
            lease.can.send(ident, b"\x11\x22")
        lease.can.send(0x102, bytes(range(48)), fd=True, brs=True)
        got = [frames.recv(5) for _ in range(3)]
    assert [(m.arbitration_id, bytes(m.data), m.is_fd) for m in got] == [
        (0x101, b"\x11\x22", False), (0x1AB, b"\x11\x22", False), (0x102, bytes(range(48)), True)]  # fmt: skip
    assert (
        lab.device("can-u2").state()["bridge"]["threaded"] is False
    )  # a file descriptor: no thread


def test_ecu_answers_a_4k_read_data_by_identifier_driven_from_the_cli(udp_lab: LabHarness) -> None:
    lab = udp_lab.lab()
    with lab.lease("name=can-u1") as lease:
        env = {"LABCTL_LEASE": lease.id}
        recv = subprocess.Popen(
            [sys.executable, "-m", "labctl.cli", "can", "isotp-recv", "can-u1", "-s", "7E0", "-d", "7E8", "-w", "20"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**udp_lab.env, **env})  # fmt: skip
        dev = lab.device("can-u1")
        wait_until(lambda: dev.state()["isotp_sessions"] == 1, 15, "isotp-recv to listen")
        sent = udp_lab.run_cli(
            "can", "isotp-send", "can-u1", "-s", "7E0", "-d", "7E8", "22 F1 A0", env=env
        )
        assert sent.returncode == 0, sent.stderr
        out, err = recv.communicate(timeout=30)
    assert recv.returncode == 0, err
    payload = bytes.fromhex(out.strip())
    assert payload == b"\x62\xf1\xa0" + BIG
    assert out.strip().startswith("62 F1 A0 00 07 0E")


def test_ecu_answers_python_can_code_through_the_labctl_interface(udp_lab: LabHarness) -> None:
    with can.Bus(interface="labctl", channel="can-u1", broker=udp_lab.bus) as bus:
        notifier = can.Notifier(bus, [])
        address = isotp.Address(isotp.AddressingMode.Normal_11bits, txid=0x7E0, rxid=0x7E8)
        stack = isotp.NotifierBasedCanStack(bus, notifier, address=address,
                                            params={"max_frame_size": 1 << 16, "blocking_send": True})  # fmt: skip
        stack.start()
        try:
            started = time.monotonic()
            stack.send(b"\x22\xf1\xa0", send_timeout=10)
            answer = stack.recv(block=True, timeout=20)
            elapsed = time.monotonic() - started
            stack.send(b"\x22\xf1\x90", send_timeout=10)
            vin = stack.recv(block=True, timeout=10)
        finally:
            stack.stop()
            notifier.stop()
    assert answer is not None and bytes(answer) == b"\x62\xf1\xa0" + BIG, (
        len(answer or b""),
        elapsed,
    )
    assert vin is not None and bytes(vin) == b"\x62\xf1\x90LABCTLSIMULATED01"
