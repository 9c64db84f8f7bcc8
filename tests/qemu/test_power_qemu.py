"""The ``qemu`` power driver on its own: the test plays the card (disk file + mux file).

A board boots what is on its disk through its real firmware, its console reaches the bus
through the serial service, and power off / guest poweroff / card yank behave as on a
physical board.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import trio

from labctl.errors import DriverError
from labctl.services.driver import DeviceContext
from labctl.services.power import qemu
from labctl.services.power.qemu import QemuConfig, QemuPower

from ..harness import LabHarness, free_port, wait_until
from .conftest import BOOT_TIMEOUT, card_board, login, need_qemu


def qemu_power(**config: object) -> QemuPower:
    """A ``qemu`` power driver outside any service (its events go nowhere)."""
    ctx = DeviceContext("b-power", lambda *a: None, lambda *a: None)
    return QemuPower(ctx, QemuConfig(**config))


def test_x86_board_boots_its_disk_to_login_and_powers_off_from_the_guest(
    harness: LabHarness, board, images
) -> None:
    dut, lab = card_board(harness, board, "x86_64", images("x86_64", "2026.12-a"))
    with lab.lease(f"dut={dut}") as lease:
        assert lease.power.state() == "off"
        with lease.serial.console() as con:
            started = time.monotonic()
            assert lease.power.on() == "on"
            con.expect("LABCTL_IMAGE_VERSION=2026.12-a", timeout=BOOT_TIMEOUT)
            login(con)
            print(f"login after {time.monotonic() - started:.2f}s")
            con.sendline("cat /etc/os-release")
            con.expect("VERSION_ID=2026.12-a", timeout=20)
            con.expect("# ", timeout=20)  # type only at the prompt, as a person would
            assert lease.power.state() == "on"
            con.sendline("poweroff")
            con.expect("Power down", timeout=30)
        wait_until(lambda: lease.power.state() == "off", 15, "QEMU to exit after poweroff")


def test_board_without_its_card_finds_no_bootable_device(
    harness: LabHarness, board, images
) -> None:
    dut, lab = card_board(harness, board, "x86_64", images("x86_64", "2026.12-a"), side="host")
    with lab.lease(f"dut={dut}") as lease, lease.serial.console() as con:
        lease.power.on()
        con.expect("No bootable device", timeout=BOOT_TIMEOUT)
        lease.power.off()
        assert lease.power.state() == "off"
    assert lab.devices(f"name={dut}-power")[0]["status"]["state"] == "off"


def test_power_cycle_keeps_one_console_and_its_scrollback(
    harness: LabHarness, board, images
) -> None:
    dut, lab = card_board(harness, board, "x86_64", images("x86_64", "2026.12-a"), side="host")
    with lab.lease(f"dut={dut}") as lease:
        with lease.serial.console() as con:
            lease.power.on()
            con.expect("No bootable device", timeout=BOOT_TIMEOUT)
            lease.power.off()
        first_end = lease.serial.log()["end"]
        (harness.root / f"{dut}.mux").write_text("dut\n")
        with lease.serial.console() as con:
            lease.power.on()
            con.expect("LABCTL_IMAGE_VERSION=2026.12-a", timeout=BOOT_TIMEOUT)
            lease.power.off()
        log = lease.serial.log(since=0)
        text = log["data"].decode(errors="replace")
        assert "No bootable device" in text and "LABCTL_IMAGE_VERSION=2026.12-a" in text
        assert log["end"] > first_end
        devs = {d["name"]: d for d in lab.devices(f"dut={dut}")}
        assert devs[f"{dut}-console"]["online"]  # the UART stayed connected while off


def test_a_machine_without_qemu_gets_one_line_naming_the_package(monkeypatch) -> None:
    monkeypatch.setattr(qemu.shutil, "which", lambda name: None)
    for machine, package in (("x86_64", "qemu-system-x86"), ("aarch64", "qemu-system-arm")):
        driver = qemu_power(machine=machine, disk="/nonexistent", console_port=1)
        with pytest.raises(DriverError) as err:
            trio.run(driver.set_power, True)
        assert str(err.value) == (
            f"b-power: qemu-system-{machine} not found: install the Debian package {package}"
        )


def test_qemu_dies_with_its_power_service_even_on_kill_9(harness: LabHarness, board) -> None:
    dut = board("x86_64", storage=False)
    disk = harness.root / f"{dut}.disk"
    disk.write_bytes(bytes(1 << 20))  # a card with nothing bootable: only the process matters
    (harness.root / f"{dut}.mux").write_text("dut\n")
    lab = harness.lab(timeout=10)
    with lab.lease(f"dut={dut}") as lease:
        lease.power.on()
        qemu_pid = next(
            int(proc.name)
            for proc in Path("/proc").iterdir()
            if proc.name.isdigit() and str(disk) in _cmdline(proc)
        )
        service_pid = int(Path(f"/proc/{qemu_pid}/stat").read_text().split()[3])
        assert "labctl" in _cmdline(Path(f"/proc/{service_pid}"))
        os.kill(service_pid, signal.SIGKILL)

        def gone() -> bool:
            try:
                os.kill(qemu_pid, 0)
            except ProcessLookupError:
                return True
            return Path(f"/proc/{qemu_pid}/stat").read_text().split()[2] == "Z"

        wait_until(gone, 10, "QEMU to die with its service")
        lease.release(reset=False)


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_qemu_failing_at_start_is_one_line_with_its_error(tmp_path: Path) -> None:
    need_qemu("x86_64")
    driver = qemu_power(
        disk=tmp_path / "none.disk", console_port=free_port(), extra_args=["-no-such-option"]
    )

    async def main() -> str:
        async with trio.open_nursery() as nursery:
            await driver.start(nursery)
            try:
                await driver.set_power(True)
            except DriverError as exc:
                return str(exc)
            finally:
                nursery.cancel_scope.cancel()
        return "no error"

    assert trio.run(main) == (
        "b-power: QEMU exited at start: qemu-system-x86_64: -no-such-option: invalid option"
    )
