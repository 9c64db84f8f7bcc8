"""The labctl command against a real lab: listings, one-shot calls, leases, shell."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from .harness import LabHarness, power_service


@pytest.fixture
def lab1(harness: LabHarness) -> LabHarness:
    harness.start_broker()
    harness.start_service(power_service("pdu1", outlets=2))
    return harness


def test_devices_listing_formats(lab1: LabHarness) -> None:
    table = lab1.run_cli("devices")
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:3] == [
        "NAME",
        "KIND",
        "DRIVER",
    ]
    items = json.loads(lab1.run_cli("devices", "-l", "dut=rpi4-02", "-o", "json").stdout)
    assert [i["name"] for i in items] == ["pdu1.2"]
    assert {"name", "kind", "driver", "labels", "online", "health", "lease"} <= set(items[0])
    assert yaml.safe_load(lab1.run_cli("devices", "-o", "yaml").stdout)[0]["kind"] == "power"
    assert lab1.run_cli("devices", "-o", "name").stdout.split() == ["pdu1.1", "pdu1.2"]
    bad = lab1.run_cli("devices", "-l", "board in (a,")
    assert bad.returncode == 2 and bad.stderr.startswith("error: invalid selector at column")


def test_power_one_shot_leases_calls_and_leaves_the_outlet_on(lab1: LabHarness) -> None:
    assert lab1.run_cli("power", "on", "pdu1.1").stdout.strip() == "on"
    assert lab1.run_cli("power", "state", "pdu1.1").stdout.strip() == "on"
    assert lab1.run_cli("power", "off", "pdu1.1").stdout.strip() == "off"
    assert lab1.run_cli("power", "state", "pdu1.1").stdout.strip() == "off"
    assert lab1.run_cli("power", "cycle", "pdu1.1", "--wait", "0").stdout.strip() == "on"
    read = lab1.run_cli("power", "read", "pdu1.1")
    assert read.returncode == 6 and "measures nothing" in read.stderr
    missing = lab1.run_cli("power", "on", "nope")
    assert missing.returncode == 3 and missing.stderr.strip() == "error: no device named 'nope'"


def test_one_shot_refuses_a_device_someone_else_holds(lab1: LabHarness) -> None:
    with lab1.lab().lease("name=pdu1.2"):
        r = lab1.run_cli("power", "on", "pdu1.2")
    assert r.returncode == 7 and "leased by" in r.stderr


def test_lease_commands_and_lease_from_the_environment(lab1: LabHarness) -> None:
    acquired = lab1.run_cli("lease", "acquire", "dut=rpi4-01", "--duration", "5m", "-o", "id")
    assert acquired.returncode == 0, acquired.stderr
    lease_id = acquired.stdout.strip()
    listed = json.loads(lab1.run_cli("lease", "list", "-o", "json").stdout)
    ref = listed[0]["ref"]
    assert len(listed) == 1 and "id" not in listed[0]  # listings never show the credential
    assert lease_id not in lab1.run_cli("devices", "-o", "json").stdout
    assert lab1.run_cli("lease", "show", lease_id, "-o", "json").returncode == 0
    ext = json.loads(
        lab1.run_cli("lease", "extend", lease_id, "--duration", "1h", "-o", "json").stdout
    )
    assert ext["end"] - ext["begin"] == pytest.approx(3900, abs=5)
    assert lab1.run_cli("power", "on", "pdu1.1", "--lease", lease_id).stdout.strip() == "on"
    assert (
        lab1.run_cli("power", "off", "pdu1.1", env={"LABCTL_LEASE": lease_id}).stdout.strip()
        == "off"
    )
    assert (
        lab1.run_cli("call", "pdu1.1", "cycle", "wait=0", "--lease", lease_id).stdout.strip()
        == "on"
    )
    by_ref = lab1.run_cli("power", "off", "pdu1.1", "--lease", ref)  # a ref acts on nothing
    assert by_ref.returncode == 7 and f"lease {ref} is not active" in by_ref.stderr
    assert "public ref" in lab1.run_cli("lease", "release", ref).stderr
    forced = lab1.run_cli("lease", "release", lease_id, "--force")
    assert forced.returncode == 2 and "needs a reason" in forced.stderr
    assert lab1.run_cli("lease", "release", ref, "--force", "--reason", "stale").returncode == 0
    gone = lab1.run_cli("lease", "release", lease_id)
    assert gone.returncode == 7 and "no active lease" in gone.stderr


def test_shell_runs_the_command_with_the_lease_and_passes_its_exit_code(lab1: LabHarness) -> None:
    script = 'test -n "$LABCTL_LEASE" && labctl power on pdu1.2 >/dev/null && exit 7'
    r = lab1.run_cli(
        "shell", "dut=rpi4-02", "--", "sh", "-c", script.replace("labctl", "python -m labctl.cli")
    )
    assert r.returncode == 7, r.stderr
    assert lab1.lab().devices("name=pdu1.2")[0]["lease"] is None  # released afterwards
    assert lab1.run_cli("shell", "dut=rpi4-02", "--", "true").returncode == 0


def test_device_show_lists_methods_and_lease_flags(lab1: LabHarness) -> None:
    out = lab1.run_cli("device", "show", "pdu1.1").stdout
    assert "cycle(wait=2.0) [needs lease]" in out and "state()  Read" in out


def test_events_journal_and_topic_filter(lab1: LabHarness) -> None:
    lab1.run_cli("power", "on", "pdu1.2")
    out = lab1.run_cli("events", "--since", "1h", "--topic", "device.pdu1.2.*").stdout
    assert "device.pdu1.2.status" in out and '"on"' in out and "pdu1.1" not in out


def test_broker_unreachable_is_one_clear_line(workdir) -> None:  # type: ignore[no-untyped-def]
    h = LabHarness(workdir)
    r = h.run_cli("devices", env={"LABCTL_BROKER": f"ipc://{workdir}/none"}, timeout=60)
    assert r.returncode == 5 and r.stderr.startswith("error: no answer from the broker")


def test_bad_service_config_names_file_and_field(harness: LabHarness) -> None:
    path = harness.root / "bad.yaml"
    path.write_text(
        yaml.safe_dump({"service": "p", "kind": "power", "driver": "mock", "devicez": []})
    )
    r = harness.run_cli("service", "run", str(path))
    assert r.returncode == 2 and f"{path}: devicez: unknown field" in r.stderr
    path.write_text(yaml.safe_dump({"service": "p", "kind": "power", "driver": "mock",
                                    "devices": [{"name": "a", "config": {"initial": "maybe"}}]}))  # fmt: skip
    r = harness.run_cli("service", "run", str(path))
    assert r.returncode == 2 and "devices[0] (a): config.initial:" in r.stderr
    path.write_text(yaml.safe_dump({"service": "p", "kind": "power", "driver": "snmpp"}))
    r = harness.run_cli("service", "run", str(path))
    assert r.returncode == 2 and "unknown power driver 'snmpp'" in r.stderr


def test_events_follow_prints_new_events_as_they_happen(lab1: LabHarness) -> None:
    import subprocess

    from .harness import LABCTL

    follow = subprocess.Popen([*LABCTL, "events", "-f", "--topic", "device.pdu1.1.status", "-o", "json"],
                              env=lab1.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert follow.stdout is not None and follow.stderr is not None
        assert follow.stderr.readline().startswith("following device.pdu1.1.status")
        lab1.run_cli("power", "on", "pdu1.1")
        line = json.loads(follow.stdout.readline())
        assert line["topic"] == "device.pdu1.1.status" and line["body"] == {"state": "on"}
    finally:
        follow.kill()
        follow.wait()


HOLDER = """
import sys, time
from labctl.lab import Lab
lease = Lab(sys.argv[1]).lease("dut=rpi4-02", duration="10m")
print(lease.ref, flush=True)
time.sleep(600)
"""


def test_a_lease_from_the_cli_outlives_the_command_and_the_grace_period(lab1: LabHarness) -> None:
    lease_id = lab1.run_cli(
        "lease", "acquire", "dut=rpi4-01", "--duration", "5m", "-o", "id"
    ).stdout.strip()
    lab = lab1.lab()
    ref = lab.client.call("lease.show", id=lease_id)["ref"]
    # A program holding a lease with keepalives, killed: the broker's sweep that ends its lease
    # after the grace (1 s here) would end the CLI lease too (acquired earlier, never kept
    # alive) if CLI leases needed keepalives. No timed negative wait.
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, lab1.bus], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        assert holder.stdout is not None
        other = holder.stdout.readline().strip()
        with lab.event_stream(f"lease.{other}.ended") as events:
            holder.kill()
            ended = events.wait_for(f"lease.{other}.ended", timeout=15)
        assert ended["body"]["reason"] == "holder-lost"
    finally:
        holder.kill()
        holder.wait()
    assert [le["ref"] for le in lab.client.call("lease.list")["leases"]] == [ref]
    on = lab1.run_cli("power", "on", "pdu1.1", "--lease", lease_id)
    assert on.stdout.strip() == "on", on.stderr
    assert lab1.run_cli("lease", "release", lease_id).returncode == 0
    ended = lab1.run_cli("power", "off", "pdu1.1", "--lease", lease_id)
    assert ended.returncode == 7 and f"lease {lease_id} is not active" in ended.stderr


def test_ctrl_c_in_labctl_shell_lets_the_command_clean_up(lab1: LabHarness) -> None:
    import os
    import signal
    import subprocess

    from .harness import LABCTL, wait_until

    script = 'trap "echo cleaned up; exit 3" INT; echo ready; while true; do sleep 0.05; done'
    shell = subprocess.Popen([*LABCTL, "shell", "dut=rpi4-02", "--", "sh", "-c", script], env=lab1.env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             start_new_session=True)  # fmt: skip
    try:
        assert shell.stdout is not None and shell.stdout.readline().strip() == "ready"
        os.killpg(shell.pid, signal.SIGINT)  # what Ctrl-C at a terminal does
        assert shell.wait(10) == 3
        assert "cleaned up" in shell.stdout.read()
        wait_until(lambda: lab1.lab().devices("name=pdu1.2")[0]["lease"] is None, 5, "the release")
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait()
