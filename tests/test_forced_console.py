"""An admin's console on a device in maintenance, by force (PROTOCOL.md §8 Access, §9),
with a real broker and mock serial services (an echo loopback): the SDK (sync and trio)
opens a device's streams with the force reason of its proxy, keeps it on a reopen, the
broker journals the forced write and closes it when maintenance ends; the CLI's `serial
console/send --force --reason` do the same, and without force say what to do."""

from __future__ import annotations

import signal
from typing import Any

import pexpect
import pytest
import trio

from labctl.aio import AsyncLab
from labctl.errors import StreamClosed
from labctl.lab import Lab

from .harness import LABCTL, LabHarness, wait_until

REVOKED = "maintenance ended: forced write access revoked"
REFUSED = (
    "the device is in maintenance (rewiring); an admin debugging it may force it with "
    "--force --reason TEXT"
)


def console_service(name: str, dut: str) -> dict[str, object]:
    return {"service": name, "kind": "serial", "driver": "mock", "labels": {"dut": dut}}


@pytest.fixture
def consoles(harness: LabHarness) -> LabHarness:
    """con1 (board b1) in maintenance ("rewiring"), con2 (board b2) good."""
    harness.start_broker()
    harness.start_service(console_service("con1", "b1"))
    harness.start_service(console_service("con2", "b2"))
    harness.lab().set_health("con1", "maintenance", "rewiring")
    return harness


def forced_rows(lab: Lab) -> list[dict[str, Any]]:
    rows = lab.client.call("audit", limit=50)
    return [r for r in rows if r["action"] == "device.forced"]


def refused_write(console: Any) -> StreamClosed | None:
    """The StreamClosed a write raises once the close the broker sent has arrived."""
    try:
        console.send("x")
    except StreamClosed as exc:
        return exc
    return None


def test_a_forced_console_sends_expects_is_journaled_and_ends_with_maintenance(
    consoles: LabHarness,
) -> None:
    admin = consoles.lab()
    with admin.event_stream("device.con1.forced") as events:
        console = admin.device("con1", force="debugging relay").console()
        try:
            assert console.transport.writable  # force, like a lease, makes it writable
            console.sendline("hello")
            console.expect_exact("hello\n", timeout=5)  # the mock echoes
            event = events.wait_for("device.con1.forced")
            assert event["body"]["action"] == "writing to console"
            assert event["body"]["reason"] == "debugging relay"
            [row] = forced_rows(admin)
            assert (row["target"], row["why"]) == ("con1", "writing to console: debugging relay")

            admin.set_health("con1", "good")
            err = wait_until(lambda: refused_write(console), 5, "the forced writer to be closed")
            assert REVOKED in str(err) and "\n" not in str(err)
        finally:
            console.close()


def test_a_forced_console_reopens_with_its_reason_after_a_broker_restart(
    consoles: LabHarness,
) -> None:
    admin = consoles.lab()
    console = admin.device("con1", force="debugging relay").console()
    try:
        console.sendline("one")
        console.expect_exact("one\n", timeout=5)
        assert consoles.broker is not None
        consoles.broker.kill(signal.SIGKILL)
        consoles.start_broker()  # maintenance is kept; the reopen must be forced again
        console.sendline("two")
        console.expect_exact("two\n", timeout=30)
        assert console.transport.closed_reason is None
        assert [r["why"] for r in forced_rows(admin)] == ["writing to console: debugging relay"] * 2
    finally:
        console.close()


def test_a_forced_console_from_trio_writes_and_ends_with_maintenance(
    consoles: LabHarness,
) -> None:
    admin = consoles.lab()

    async def main() -> None:
        async with AsyncLab(consoles.bus) as lab:
            dev = await lab.device("con1", force="trio debugging")
            async with dev.console() as con:
                await con.sendline("hello")
                await con.expect_exact("hello\n", timeout=5)
                await trio.to_thread.run_sync(admin.set_health, "con1", "good")
                with pytest.raises(pexpect.EOF):  # the broker closed it
                    await con.expect_exact("never", timeout=5)
                assert con.stream.closed_reason == REVOKED
                with pytest.raises(StreamClosed, match="maintenance ended"):
                    await con.send("x")

    trio.run(main)
    [row] = forced_rows(admin)
    assert row["why"] == "writing to console: trio debugging"


def test_without_force_a_console_write_on_a_device_in_maintenance_says_how_to_force(
    consoles: LabHarness,
) -> None:
    from labctl.errors import InMaintenance

    lab = consoles.lab()
    with pytest.raises(InMaintenance) as refused:
        lab.device("con1").console(write=True)
    assert str(refused.value).endswith(REFUSED) and "\n" not in str(refused.value)


def test_cli_serial_send_by_force_on_a_device_in_maintenance(consoles: LabHarness) -> None:
    lab = consoles.lab()
    r = consoles.run_cli("serial", "send", "con1", "hello", "--force", "--reason", "relay check",
                         "--expect", "hello", "--timeout", "5")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello\n"
    assert b"hello\n" in lab.device("con1").log()["data"]
    assert [r["why"] for r in forced_rows(lab)] == ["send(): relay check"]
    # reading needs no force: expect and log work on a device in maintenance
    r = consoles.run_cli("serial", "expect", "con1", "hel+o", "--since", "0", "--timeout", "5")
    assert r.returncode == 0 and r.stdout == "hello\n", r.stderr
    r = consoles.run_cli("serial", "log", "con1")
    assert r.returncode == 0 and r.stdout == "hello\n", r.stderr


def test_cli_serial_send_refusals_are_one_line_with_the_right_exit_code(
    consoles: LabHarness,
) -> None:
    r = consoles.run_cli("serial", "send", "con1", "hello")
    assert r.returncode == 7, r.stderr
    assert r.stderr == f"error: send() on 'con1': {REFUSED}\n"
    r = consoles.run_cli("serial", "send", "con1", "hello", "--force")
    assert r.returncode == 2 and "--force needs --reason" in r.stderr, r.stderr
    r = consoles.run_cli("serial", "send", "con2", "hello", "--force", "--reason", "why not")
    assert r.returncode == 2, r.stderr
    assert r.stderr == (
        "error: force is for devices in maintenance; 'con2' is good: lease it instead\n"
    )
    assert forced_rows(consoles.lab()) == []


def test_cli_serial_console_by_force_types_into_a_device_in_maintenance(
    consoles: LabHarness,
) -> None:
    argv = [*LABCTL[1:], "serial", "console", "con1", "--force", "--reason", "u-boot prompt"]
    child = pexpect.spawn(LABCTL[0], argv, env=consoles.env, timeout=15)
    try:
        child.expect_exact("[labctl] connected to con1")
        child.send("printenv\r")
        child.expect_exact("printenv")  # echoed by the mock, so it reached the port
        lab = consoles.lab()
        assert [r["why"] for r in forced_rows(lab)] == ["writing to console: u-boot prompt"]
        assert lab.devices("name=con1")[0]["lease"] is None  # no lease was taken
        lab.set_health("con1", "good")
        child.expect_exact(f"[labctl] console closed: {REVOKED}")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    finally:
        child.terminate(force=True)

    r = consoles.run_cli("serial", "console", "con1", "--force")
    assert r.returncode == 2 and "--force needs --reason" in r.stderr, r.stderr
    r = consoles.run_cli("serial", "console", "con2", "--force", "--reason", "why not")
    assert r.returncode == 2, r.stderr
    assert "force is for devices in maintenance; 'con2' is good" in r.stderr


def test_cli_serial_console_without_force_watches_and_says_how_to_force(
    consoles: LabHarness,
) -> None:
    child = pexpect.spawn(
        LABCTL[0], [*LABCTL[1:], "serial", "console", "con1"], env=consoles.env, timeout=15
    )
    try:
        child.expect_exact("[labctl] read-only: ")
        child.expect_exact("\r\n")
        line = child.before.decode()
        assert line == f"writing to console on 'con1': {REFUSED}", line
        child.expect_exact("[labctl] connected to con1")
        child.send("x")
        child.expect_exact("input ignored")
        child.send("\x1dq")
        child.expect(pexpect.EOF)
    finally:
        child.terminate(force=True)
    assert consoles.lab().devices("name=con1")[0]["lease"] is None
