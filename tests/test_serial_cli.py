"""`labctl serial …` against a serial service on a real pty: interactive console, log,
send, expect."""

from __future__ import annotations

import json
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
    assert missing.returncode == 5 and "did not appear within 0.5s" in missing.stderr
    assert "login: " in missing.stderr  # what the console printed, to debug from the log
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


def test_send_then_expect_in_separate_processes_sees_an_answer_that_came_first(
    dut: LabHarness, pty: Pty
) -> None:
    pty.write_all(b"old # ")  # an older prompt must not satisfy the expect below
    wait_until(lambda: dut.lab().device("ser1").log()["end"] == 6, 5, "old output")
    r = dut.run_cli("serial", "send", "ser1", "root", "--crlf")
    assert r.returncode == 0, r.stderr
    assert pty.read_exactly(6) == b"root\r\n"
    pty.write_all(b"Password ok\r\nroot@b1:~# ")
    wait_until(lambda: dut.lab().device("ser1").log()["end"] == 6 + 24, 5, "the answer")
    # the answer is complete before expect starts: it searches from the send's position
    got = dut.run_cli("serial", "expect", "ser1", "# ", "--timeout", "5", "-o", "json")
    assert got.returncode == 0, got.stderr
    found = json.loads(got.stdout)
    assert found == {"offset": 30, "match": "# ", "before": "Password ok\r\nroot@b1:~"}
    assert "--since 30" in got.stderr
    # chained: from the printed offset, the next prompt only
    pty.write_all(b"x\r\nroot@b1:~# ")
    again = dut.run_cli("serial", "expect", "ser1", "~# ", "--since", "30", "--timeout", "5")
    assert again.returncode == 0 and again.stdout == "~# \n", again.stderr
    assert "--since 44" in again.stderr


def test_send_with_expect_and_a_line_ending(dut: LabHarness, pty: Pty) -> None:
    proc = subprocess.Popen(
        [*LABCTL, "serial", "send", "ser1", "uname", "--linesep", "cr", "--expect", r"Linux \S+",
         "--timeout", "10"],
        env=dut.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert pty.read_exactly(6) == b"uname\r"
        pty.write_all(b"uname\r\nLinux b1\r\n# ")
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert out == "Linux b1\n"
    finally:
        proc.kill()
        proc.wait()


def test_expect_timeout_has_its_own_exit_code(dut: LabHarness, pty: Pty) -> None:
    r = dut.run_cli("serial", "send", "ser1", "ls", "--expect", "nothing-like-this", "--timeout",
                    "0.5")  # fmt: skip
    assert r.returncode == 5, (r.returncode, r.stderr)
    assert "did not appear within 0.5s" in r.stderr
    assert "Exit status: 0 matched; 5" in dut.run_cli("serial", "expect", "--help").stdout
