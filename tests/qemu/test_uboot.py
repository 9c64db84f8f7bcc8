"""The U-Boot helper against the real U-Boot (Debian's u-boot-qemu) of the aarch64 board."""

from __future__ import annotations

import pytest

from labctl.uboot import UBootCommandFailed

from ..harness import LabHarness
from .conftest import BOOT_TIMEOUT, card_board, login


def test_uboot_prompt_commands_environment_and_boot(harness: LabHarness, board, images) -> None:
    dut, lab = card_board(harness, board, "aarch64", images("aarch64", "2026.12-u"))
    with lab.lease(f"dut={dut}") as lease, lease.uboot(timeout=BOOT_TIMEOUT) as ub:
        assert ub.run("printenv bootcmd").strip() == "bootcmd=run distro_bootcmd"
        assert ub.run_checked("echo hello; echo world") == "hello\nworld\n"
        with pytest.raises(UBootCommandFailed) as failed:
            ub.run_checked("false")
        assert failed.value.status == 1

        assert ub.getenv("labctl_nothing") is None
        ub.setenv("labctl_x", "a b;c $d 'e'")
        assert ub.getenv("labctl_x") == "a b;c $d 'e'"
        ub.setenv_all({"labctl_y": "1", "labctl_x": None})
        assert ub.getenv("labctl_x") is None
        env = ub.printenv()
        assert env["labctl_y"] == "1" and env["bootcmd"] == "run distro_bootcmd"

        con = ub.boot()
        con.expect("LABCTL_IMAGE_VERSION=2026.12-u", timeout=BOOT_TIMEOUT)
        login(con)
        con.sendline("uname -m")
        con.expect("aarch64", timeout=20)


def test_uboot_cli_runs_commands_and_sets_the_environment(
    harness: LabHarness, board, images
) -> None:
    dut, lab = card_board(harness, board, "aarch64", images("aarch64", "2026.12-u"))

    def cli(*args: str, lease: str = ""):
        env = {"LABCTL_LEASE": lease} if lease else {}
        return harness.run_cli("uboot", *args, env=env, timeout=BOOT_TIMEOUT + 30)

    shown = cli("run", dut, "printenv bootcmd")  # a one-shot lease: the board ends off
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == "bootcmd=run distro_bootcmd\n"
    assert lab.device(f"{dut}-power").call("state") == "off"
    # --no-cycle on a board that is off: one line and the timeout's exit code, no traceback
    off = cli("env", "--no-cycle", "--timeout", "2", dut, "x")
    assert off.returncode == 5 and off.stderr.strip() == (
        f"error: {dut}-console: no '=>' within 2s (without a power cycle the board must be at U-Boot)"
    ), off.stderr

    # a session in a held lease: the board stays at the prompt, --no-cycle attaches to it
    with lab.lease(f"dut={dut}") as lease:
        set_ = cli("env", dut, "labctl_k=v w", lease=lease.id)
        assert set_.returncode == 0 and set_.stdout == "labctl_k=v w\n", set_.stderr
        got = cli("env", "--no-cycle", dut, "labctl_k", lease=lease.id)
        assert got.returncode == 0 and got.stdout == "v w\n", got.stderr
        assert "labctl_k=v w\n" in cli("env", "--no-cycle", dut, lease=lease.id).stdout
        deleted = cli("env", "--no-cycle", dut, "labctl_k=", lease=lease.id)
        assert deleted.stdout == "labctl_k deleted\n"
        missing = cli("env", "--no-cycle", dut, "labctl_k", lease=lease.id)
        assert missing.returncode == 1 and "labctl_k is not set" in missing.stderr
        assert cli("run", "--no-cycle", dut, "false", lease=lease.id).returncode == 1
