"""The whole lab loop on a QEMU board, with real processes: flash, power on, boot, log in."""

from __future__ import annotations

from ..harness import LabHarness, wait_until
from .conftest import BOOT_TIMEOUT, login


def os_release(con) -> str:
    con.sendline("cat /etc/os-release")
    con.expect(r"VERSION_ID=(\S+)\r\n", timeout=20)
    version = con.match.group(1)
    con.expect("# ", timeout=20)
    return version


def test_flash_boot_login_reflash_power_cycle_release(harness: LabHarness, board, images) -> None:
    dut = board("x86_64")
    image_a = images("x86_64", "2026.12-a")
    image_b = images("x86_64", "2026.12-b")
    lab = harness.lab(timeout=10)
    with lab.lease(f"dut={dut}") as lease:
        written = lease.storage.flash(f"{image_a}.zst")  # zstd, bmap found beside it
        assert written["state"] == "dut" and written.get("bmap")
        with lease.serial.console() as con:
            lease.power.on()
            login(con)
            assert os_release(con) == "2026.12-a"

            # Re-flash while it runs: the card leaves the DUT under a running board (yank),
            # through the CLI with this lease.
            flashed = harness.run_cli(
                "storage", "flash", f"{dut}-storage", f"{image_b}.zst",
                env={"LABCTL_LEASE": lease.id}, timeout=120,
            )  # fmt: skip
            assert flashed.returncode == 0, flashed.stderr
            con.sendline("dd if=/dev/vda of=/dev/null bs=4096 count=1 skip=4000")
            con.expect("Input/output error", timeout=20)  # the yanked card is gone

            lease.power.cycle(wait=0)
            login(con)
            assert os_release(con) == "2026.12-b"

        lease.storage.host()
        with lease.serial.console() as con:
            lease.power.cycle(wait=0)
            con.expect("No bootable device", timeout=BOOT_TIMEOUT)
        lease.storage.dut()
        assert lease.power.state() == "on"
    power = lab.device(f"{dut}-power")
    wait_until(lambda: power.call("state") == "off", 15, "the board off after release")
