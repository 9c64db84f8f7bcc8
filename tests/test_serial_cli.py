"""`labctl serial …` against a serial service on a real pty: interactive console, log,
send, expect."""

from __future__ import annotations

import subprocess

import pexpect
import pytest

from .harness import LABCTL, LabHarness, wait_until
from .test_streams import Pty, serial_service


@pytest.fixture
def dut(harness: LabHarness, pty: Pty) -> LabHarness:
    harness.start_broker()
    harness.start_service(serial_service("ser1", pty.path, dut="b1"))
    harness.start_service(
        {"service": "pwr1", "kind": "power", "driver": "mock", "labels": {"dut": "b1"}}
    )
    return harness


@pytest.fixture
def pty() -> Pty:
    p = Pty()
    yield p  # type: ignore[misc]
    p.close()


def test_interactive_console_types_reads_and_obeys_the_escape_keys(
    dut: LabHarness, pty: Pty
) -> None:
    child = pexpect.spawn(
        LABCTL[0], [*LABCTL[1:], "serial", "console", "ser1"], env=dut.env, timeout=15
    )
    try:
        child.expect_exact("[labctl] connected to ser1")
        pty.write_all(b"U-Boot 2024.01 ready\r\n")
        child.expect_exact("U-Boot 2024.01 ready")
        child.send("printenv\r")
        assert pty.read_exactly(9) == b"printenv\r"
        child.send("\x1d?")
        child.expect_exact("q quit, b send break, p power-cycle")
        lab = dut.lab()
        with lab.event_stream("device.pwr1.status") as events:
            child.send("\x1dp")
            child.expect_exact("power-cycling pwr1")
            events.wait_for("device.pwr1.status", lambda b: b["state"] == "on")
        assert lab.devices("name=ser1")[0]["holder"]  # the console holds the DUT's lease
        child.send("\x1dq")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
        wait_until(lambda: lab.devices("dut=b1")[0]["lease"] is None, 5, "the lease to be released")
        assert lab.device("pwr1").state() == "on"  # leaving the console switches nothing off
    finally:
        child.terminate(force=True)


def test_console_is_read_only_while_someone_else_holds_the_dut(dut: LabHarness, pty: Pty) -> None:
    with dut.lab().lease("dut=b1"):
        child = pexpect.spawn(
            LABCTL[0], [*LABCTL[1:], "serial", "console", "ser1"], env=dut.env, timeout=15
        )
        try:
            child.expect(r"read-only: .*ser1 leased by")
            child.expect_exact("[labctl] connected")
            pty.write_all(b"watching\r\n")
            child.expect_exact("watching")
            child.send("x")
            child.expect_exact("input ignored")
            child.send("\x1dq")
            child.expect(pexpect.EOF)
        finally:
            child.terminate(force=True)


def test_send_expect_and_log(dut: LabHarness, pty: Pty) -> None:
    r = dut.run_cli("serial", "send", "ser1", "reboot")
    assert r.returncode == 0, r.stderr
    assert pty.read_exactly(7) == b"reboot\n"
    pty.write_all(b"Starting kernel ...\r\nlogin: ")
    wait_until(lambda: b"login: " in dut.lab().device("ser1").log()["data"], 5, "the scrollback")
    assert (
        dut.run_cli(
            "serial", "expect", "ser1", r"kernel \.+", "--since", "0", "--timeout", "5"
        ).returncode
        == 0
    )
    missing = dut.run_cli("serial", "expect", "ser1", "panic", "--since", "0", "--timeout", "0.5")
    assert missing.returncode == 1 and "did not appear within 0.5s" in missing.stderr
    # (text mode folds \r\n into \n)
    assert dut.run_cli("serial", "log", "ser1").stdout == "Starting kernel ...\nlogin: "
    assert dut.run_cli("serial", "log", "ser1", "--since", "9").stdout == "kernel ...\nlogin: "

    follow = subprocess.Popen(
        [*LABCTL, "serial", "log", "ser1", "--follow"], env=dut.env, stdout=subprocess.PIPE
    )
    try:
        assert follow.stdout is not None
        assert (
            follow.stdout.read(len(b"Starting kernel ...\r\nlogin: "))
            == b"Starting kernel ...\r\nlogin: "
        )
        pty.write_all(b"root\r\n")
        assert follow.stdout.read(6) == b"root\r\n"
    finally:
        follow.kill()
        follow.wait()


def test_expect_waits_for_new_output_by_default(dut: LabHarness, pty: Pty) -> None:
    pty.write_all(b"old prompt> ")
    wait_until(lambda: dut.lab().device("ser1").log()["end"] == 12, 5, "old output")
    proc = subprocess.Popen([*LABCTL, "serial", "expect", "ser1", "prompt>", "--timeout", "10"], env=dut.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        wait_until(
            lambda: dut.lab().device("ser1").status()["streams"] == 1, 10, "expect to attach"
        )
        assert proc.poll() is None  # the old prompt does not count
        pty.write_all(b"new prompt> ")
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
