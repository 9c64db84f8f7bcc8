"""The lab's core loop across real processes: lease -> `storage flash` -> `power on` ->
`serial expect` the written version -> log in -> release; and a board whose card is at
the host finds no medium."""

from __future__ import annotations

import gzip
from pathlib import Path

from ..harness import LabHarness
from ..serial.helpers import SimDut


def board(harness: LabHarness) -> SimDut:
    """A simulated board as three services in one ``dut`` group: power, console, storage."""
    root = harness.root
    dut = SimDut(root / "b1.tty", root / "b1.power", "--hostname", "b1",
                 "--storage", str(root / "b1.card"), "--storage-state", str(root / "b1.side"))  # fmt: skip
    for service, kind, driver, config in (
        ("b1-power", "power", "mock", {"state_file": str(root / "b1.power")}),
        ("b1-console", "serial", "pyserial", {"url": str(root / "b1.tty")}),
        ("b1-storage", "storage", "mock", {"path": str(root / "b1.card"), "size": "64MiB",
                                           "state_file": str(root / "b1.side"), "fsync": False}),
    ):  # fmt: skip
        try:
            harness.start_service({"service": service, "kind": kind, "driver": driver,
                                   "labels": {"dut": "b1"}, "config": config})  # fmt: skip
        except BaseException:
            dut.stop()  # the caller's try/finally has not begun: do not leave the board running
            raise
    return dut


def test_flash_power_on_and_the_board_boots_the_written_version(
    harness: LabHarness, tmp_path: Path
) -> None:
    harness.start_broker()
    dut = board(harness)
    try:
        img = tmp_path / "v9.img"
        made = harness.run_cli("sim", "image", str(img), "--version", "9.1")
        assert made.returncode == 0, made.stderr
        (tmp_path / "v9.img.gz").write_bytes(gzip.compress(img.read_bytes(), 1))

        acquired = harness.run_cli("lease", "acquire", "dut=b1", "-o", "id")
        assert acquired.returncode == 0, acquired.stderr
        lease_id = acquired.stdout.strip()
        env = {"LABCTL_LEASE": lease_id}
        flashed = harness.run_cli(
            "storage", "flash", "b1-storage", str(tmp_path / "v9.img.gz"), "--verify", env=env
        )
        assert flashed.returncode == 0, flashed.stderr
        assert "card at dut" in flashed.stdout and "verified" in flashed.stdout
        assert harness.run_cli("power", "on", "b1-power", env=env).returncode == 0
        seen = harness.run_cli("serial", "expect", "b1-console", r"labctl image version 9\.1",
                               "--since", "0", "--timeout", "20")  # fmt: skip
        assert seen.returncode == 0, seen.stderr

        lab = harness.lab()
        lease = lab.attach(lease_id)
        con = lease.serial.console(since=0)
        con.expect("b1 login:", timeout=20)
        con.sendline("root")
        con.expect("# ", timeout=10)
        con.sendline("cat /etc/os-release")
        con.expect(r"VERSION_ID=9\.1", timeout=10)
        con.close()
        released = harness.run_cli("lease", "release", lease_id)
        assert released.returncode == 0, released.stderr
        assert lab.device("b1-storage").call("state") == "off"  # reset on lease end

        with lab.lease("dut=b1") as again:  # card at the host: the board finds no medium
            again.storage.host()
            con = again.serial.console()
            again.power.cycle(wait=0.1)
            con.expect("no medium", timeout=20)
            con.expect("=> ", timeout=10)
            con.close()
    finally:
        dut.stop()
