"""`labctl lab up --example qemu`: two QEMU boards, each power + console + storage."""

from __future__ import annotations

import subprocess
import sys

from labctl.cli.lab_up import load_lab

from ..harness import LabUp, free_port, wait_until
from .conftest import BOOT_TIMEOUT, login, need_qemu


def test_the_qemu_example_lab_flashes_and_boots_its_x86_board(workdir, images) -> None:
    need_qemu("x86_64")
    need_qemu("aarch64")
    # The shipped file, with free ports instead of its fixed ones (5550/5551, 5560/5561).
    shown = subprocess.run([sys.executable, "-m", "labctl.cli", "lab", "example", "qemu"],
                           capture_output=True, text=True, timeout=30, check=True).stdout  # fmt: skip
    run = workdir / "state" / "run"
    assert load_lab(None, run, "qemu")["services"][0]["config"]["console_port"] == 5560
    text = shown.replace("5560", str(free_port())).replace("5561", str(free_port()))
    (workdir / "lab.yaml").write_text(text)
    with LabUp(workdir, workdir / "lab.yaml", timeout=10) as up:
        expected = [
            f"qemu-{b}-01-{k}" for b in ("x86", "arm") for k in ("console", "power", "storage")
        ]
        up.wait_online("site=sim", expected, 60, "the QEMU example lab")
        lab = up.lab
        assert {d["labels"]["arch"] for d in lab.devices("kind=power")} == {"x86_64", "aarch64"}
        with lab.lease("dut=qemu-x86-01") as lease:
            lease.storage.flash(f"{images('x86_64', '2026.12-a')}.zst")
            # Seen once under load: the console device briefly offline right after the flash
            # (its socket:// reconnect); opening it then is refused. Wait for it to be back.
            wait_until(lambda: "qemu-x86-01-console" in up.online("site=sim"), 30, "the console")
            with lease.serial.console() as con:
                lease.power.on()
                login(con, BOOT_TIMEOUT)
                con.sendline("grep VERSION_ID /etc/os-release")
                con.expect("VERSION_ID=2026.12-a", timeout=20)
