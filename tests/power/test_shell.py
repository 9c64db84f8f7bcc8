"""ShellPower with real commands writing and reading a file that stands in for a relay."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any

import pydantic
import pytest
import trio

from labctl.errors import DriverError, NotSupported
from labctl.services.power.shell import ShellPower

from ..drivers.harness import eventually, running, trio_test


def relay_cfg(relay: Path, **over: Any) -> dict[str, Any]:
    """String commands through the shell; state by exit code (grep -q: 0 on, 1 off)."""
    return {
        "on": f"echo on > {relay}",
        "off": f"echo off > {relay}",
        "state": f"grep -qx on {relay}",
        **over,
    }


@trio_test
async def test_commands_switch_and_exit_code_reads_state(tmp_path: Path) -> None:
    relay = tmp_path / "relay"
    relay.write_text("off\n")
    async with running(ShellPower, relay_cfg(relay)) as (drv, rec):
        assert await drv.state() == "off"
        assert await drv.on() == "on"
        assert relay.read_text() == "on\n"
        assert await drv.state() == "on"
        relay.write_text("off\n")  # someone else switched it
        assert await drv.state() == "off"
        assert rec.states == ["off", "on", "off"]


@trio_test
async def test_list_commands_and_output_regexes(tmp_path: Path) -> None:
    relay = tmp_path / "relay"
    py = sys.executable
    cfg = {
        "on": [py, "-c", f"open({str(relay)!r}, 'w').write('Relay: ENABLED')"],
        "off": [py, "-c", f"open({str(relay)!r}, 'w').write('Relay: DISABLED')"],
        "state": ["cat", str(relay)],
        "on_output": r"Relay: ENABLED",
        "off_output": r"Relay: DISABLED",
    }
    async with running(ShellPower, cfg) as (drv, _):
        await drv.on()
        assert await drv.state() == "on"
        await drv.off()
        assert await drv.state() == "off"
        relay.write_text("Relay: FAULT")
        with pytest.raises(
            DriverError, match="matches neither on_output nor off_output: 'Relay: FAULT'"
        ):
            await drv.state()


@trio_test
async def test_failed_command_carries_stderr(tmp_path: Path) -> None:
    cfg = relay_cfg(tmp_path / "relay", on="echo 'relay board not found' >&2; exit 3")
    async with running(ShellPower, cfg) as (drv, rec):
        with pytest.raises(
            DriverError, match=r"on command failed \(exit 3\): relay board not found"
        ) as err:
            await drv.on()
        assert err.value.details == {"stderr": "relay board not found\n", "exit": 3}
        assert rec.states == []  # nothing was switched, nothing published
        # a state command exiting with something other than 0/1 is an error, not "off"
    async with running(ShellPower, relay_cfg(tmp_path / "relay", state="exit 2")) as (drv, _):
        with pytest.raises(DriverError, match=r"state command failed \(exit 2\)"):
            await drv.state()


@trio_test
async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # a shell with a child: both must die, not just the shell
    cfg = relay_cfg(tmp_path / "relay", off=f"sleep 30 & echo $$ $! > {pids}; wait", timeout=0.5)
    async with running(ShellPower, cfg) as (drv, _):
        before = trio.current_time()
        with pytest.raises(DriverError, match=r"off command timed out after 0.5s \(killed\)"):
            await drv.off()
        assert trio.current_time() - before < 3
    for pid in map(int, pids.read_text().split()):
        await eventually(functools.partial(_assert_gone, pid))


async def _assert_gone(pid: int) -> None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    stat = Path(f"/proc/{pid}/stat").read_text()
    assert stat.split(")")[-1].split()[0] == "Z", f"process {pid} still running"


@trio_test
async def test_missing_program_is_reported(tmp_path: Path) -> None:
    cfg = {"on": ["/nonexistent/relay-tool", "1"], "off": "no-such-relay-tool 0"}
    async with running(ShellPower, cfg) as (drv, _):
        with pytest.raises(DriverError, match="cannot run on command"):
            await drv.on()
        with pytest.raises(DriverError, match=r"off command failed \(exit 127\): .*not found"):
            await drv.off()


@trio_test
async def test_without_state_command_reports_what_it_last_did(tmp_path: Path) -> None:
    cfg = {"on": "true", "off": "true"}
    async with running(ShellPower, cfg) as (drv, _):
        with pytest.raises(NotSupported, match="no 'state' command"):
            await drv.state()
        await drv.on()
        assert await drv.state() == "on"


@trio_test
async def test_env_and_device_name_reach_the_command(tmp_path: Path) -> None:
    out = tmp_path / "env"
    cfg = {"on": f'echo "$RELAY_CHANNEL $LABCTL_DEVICE" > {out}', "off": "true",
           "env": {"RELAY_CHANNEL": "7"}}  # fmt: skip
    async with running(ShellPower, cfg, name="rpi4-01-power") as (drv, _):
        await drv.on()
    assert out.read_text() == "7 rpi4-01-power\n"


@pytest.mark.parametrize(
    ("bad", "message"),
    [({"on": ""}, "must not be empty"), ({"on_output": "("}, "not a regular expression"),
     ({"timeout": 0}, "timeout must be > 0"), ({"off": None}, "off")],
)  # fmt: skip
def test_bad_config(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        ShellPower.Config(**({"on": "true", "off": "true"} | bad))
