"""Device administration with real broker and service processes: removing devices whose
service is gone (by hand and after ``--forget-offline-after``) and forcing a device in
maintenance (issue 9, items 18 and 19)."""

from __future__ import annotations

import pytest
import trio
import zmq

from labctl import protocol
from labctl.aio import AsyncLab
from labctl.client import holder_identity
from labctl.errors import BadRequest, DeviceBusy, DeviceNotFound, InMaintenance
from labctl.lab import Lab

from .harness import LabHarness, power_service, wait_until


def _audit(lab: Lab, action: str) -> list[dict]:  # type: ignore[type-arg]
    return [r for r in lab.client.call("audit", limit=50) if r["action"] == action]


def _user() -> str:
    return holder_identity().rpartition(":")[0]


def test_a_device_whose_service_stopped_is_removed_by_command_and_journaled(
    harness: LabHarness,
) -> None:
    harness.start_broker()
    svc = harness.start_service(power_service("pdu1", outlets=1))
    lab = harness.lab()
    with pytest.raises(DeviceBusy, match="service 'pdu1', which is connected") as online:
        lab.remove_device("pdu1.1")
    assert online.value.details["reason"] == "online"
    svc.stop()
    harness.wait_online(["pdu1.1"], online=False)
    r = harness.run_cli("device", "remove", "pdu1.1")
    assert r.returncode == 0 and r.stdout == "pdu1.1: removed\n", r.stderr
    assert [d["name"] for d in lab.devices()] == []
    [row] = _audit(lab, "device.removed")
    assert row["target"] == "pdu1.1" and row["who"].startswith(f"{_user()}:")  # the CLI's pid
    assert lab.history(topic="device.pdu1.1.removed")
    r = harness.run_cli("device", "remove", "pdu1.1")
    assert r.returncode == 3 and "no device named 'pdu1.1'" in r.stderr
    with pytest.raises(DeviceNotFound):
        lab.remove_device("pdu1.1")


def test_a_leased_offline_device_is_not_removed(harness: LabHarness) -> None:
    harness.start_broker()
    svc = harness.start_service(power_service("pdu1", outlets=1))
    lab = harness.lab()
    lease = lab.lease("name=pdu1.1", keepalive=True)
    svc.stop()
    harness.wait_online(["pdu1.1"], online=False)
    with pytest.raises(DeviceBusy, match="is leased") as leased:
        lab.remove_device("pdu1.1")
    assert leased.value.details["reason"] == "leased"
    lease.release()
    assert lab.remove_device("pdu1.1") == {"name": "pdu1.1", "removed": True}


def test_broker_forgets_devices_offline_longer_than_the_option(harness: LabHarness) -> None:
    harness.start_broker(extra=("--forget-offline-after", "1s"))
    harness.start_service(power_service("pdu1", outlets=1))
    gone = harness.start_service(power_service("pdu2", outlets=1, dut_prefix="x"))
    lab = harness.lab()
    gone.stop()
    wait_until(lambda: [d["name"] for d in lab.devices()] == ["pdu1.1"], 10, "pdu2.1 forgotten")
    [row] = _audit(lab, "device.removed")
    assert (row["who"], row["target"]) == ("broker", "pdu2.1")
    assert "offline longer than 1s" in row["why"]
    assert lab.history(topic="device.pdu2.1.removed")
    # a device back from the dead registers again as usual
    harness.start_service(power_service("pdu2", outlets=1, dut_prefix="x"))


def test_a_device_in_maintenance_is_operated_only_by_force_with_a_reason(
    harness: LabHarness,
) -> None:
    harness.start_broker()
    harness.start_service(power_service("pdu1", outlets=1))
    lab = harness.lab()
    lab.set_health("pdu1.1", "maintenance", "flaky relay")
    with pytest.raises(InMaintenance, match="in maintenance \\(flaky relay\\)"):
        lab.one_shot("pdu1.1", "on")
    r = harness.run_cli("power", "on", "pdu1.1")
    assert r.returncode == 7 and "--force --reason" in r.stderr, r.stderr
    r = harness.run_cli("power", "on", "pdu1.1", "--force")
    assert r.returncode == 2 and "--force needs --reason" in r.stderr, r.stderr
    assert lab.device("pdu1.1").state() == "off"  # read-only calls need no force

    r = harness.run_cli("power", "on", "pdu1.1", "--force", "--reason", "debugging relay")
    assert r.returncode == 0, r.stderr
    assert lab.device("pdu1.1").state() == "on"
    r = harness.run_cli("call", "pdu1.1", "off", "--force", "--reason", "and back off")
    assert r.returncode == 0, r.stderr
    assert lab.one_shot("pdu1.1", "state") == "off"
    assert lab.one_shot("pdu1.1", "on", force="sdk check") == "on"

    async def forced_from_trio() -> str:  # AsyncLab has force too
        async with AsyncLab(harness.bus) as alab:
            dev = await alab.device("pdu1.1", force="trio check")
            return str(await dev.off())

    assert trio.run(forced_from_trio) == "off"
    rows = _audit(lab, "device.forced")
    assert [r["why"] for r in rows] == [
        "off(): trio check", "on(): sdk check", "off(): and back off", "on(): debugging relay"
    ]  # fmt: skip
    assert {r["target"] for r in rows} == {"pdu1.1"}
    assert rows[0]["who"] == holder_identity()  # this process; the CLI's carry its pid
    assert all(r["who"].startswith(f"{_user()}:") for r in rows)
    assert lab.history(topic="device.pdu1.1.forced")

    # force is only for maintenance: a good device is leased as usual
    lab.set_health("pdu1.1", "good")
    with pytest.raises(BadRequest, match="force is for devices in maintenance"):
        lab.device("pdu1.1", force="why not").on()


def test_a_write_stream_on_a_device_in_maintenance_needs_force(harness: LabHarness) -> None:
    harness.start_broker()
    harness.start_service({"service": "con1", "kind": "serial", "driver": "mock"})
    lab = harness.lab()
    lab.set_health("con1", "maintenance", "rewiring")
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(harness.bus)

    def open_console(rid: int, force: str | None) -> protocol.Message:
        req = protocol.StreamOpen(rid, "con1", "console", True, None, {}, 0, None, force)
        sock.send_multipart(req.to_frames())
        assert sock.poll(5000)
        return protocol.decode(sock.recv_multipart())

    try:
        refused = open_console(1, None)
        assert refused.mtype == protocol.ERROR and refused.header["code"] == "maintenance"
        opened = open_console(2, "typing at u-boot")
        assert opened.mtype == protocol.REPLY, opened.header
    finally:
        sock.close()
    [row] = _audit(lab, "device.forced")
    assert row["target"] == "con1" and row["why"] == "writing to console: typing at u-boot"


def test_lab_files_accept_forget_offline_after_and_pass_it_to_the_broker(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    import yaml

    from labctl.cli.lab_up import broker_argv, load_lab
    from labctl.errors import ConfigError

    good = tmp_path / "lab.yaml"
    good.write_text(yaml.safe_dump({"broker": {"forget_offline_after": "7d"}, "services": []}))
    lab = load_lab(str(good), tmp_path)
    argv = broker_argv(lab["broker"], str(tmp_path / "state"))
    assert argv[argv.index("--forget-offline-after") + 1] == "7d"
    helped = subprocess.run([*argv[:5], "--help"], capture_output=True, text=True, timeout=30)
    assert "--forget-offline-after DURATION" in helped.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"broker": {"forget_offline_after": "soon"}, "services": []}))
    with pytest.raises(ConfigError, match="forget_offline_after"):
        load_lab(str(bad), tmp_path)
