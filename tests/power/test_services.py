"""Power drivers as real service processes behind the real broker, driven by CLI and SDK.

Every test starts a broker and `labctl service run` processes (tests/harness.py) in front of
a real peer: Debian snmpd with the pass_persist outlet tables, mosquitto with a simulated
Tasmota plug, or shell commands on a file. What the hardware did is checked on the peer's
side (snmpget, the agent's backing files, an independent MQTT client, the relay file), not
only through labctl. Waits are on events or conditions with deadlines, never fixed sleeps.
"""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from labctl.errors import DriverError

from ..harness import LabHarness, wait_until
from .conftest import Broker, SimPlug, SnmpAgent

APC_STATUS = ".1.3.6.1.4.1.318.1.1.12.3.5.1.1.4"  # rPDUOutletStatusOutletState.N: 1 on, 2 off
APC_CMD = ".1.3.6.1.4.1.318.1.1.12.3.3.1.1.4"  # rPDUOutletControlOutletCommand.N


def snmp_service(agent: SnmpAgent, name: str, outlets: list[int], **config: Any) -> dict[str, Any]:
    """An APC PDU service: one device ``<name>.<outlet>`` per outlet, each its own DUT."""
    return {
        "service": name,
        "kind": "power",
        "driver": "snmp",
        "labels": {"site": "lab1", "pdu": name},
        "config": {
            "host": agent.host,
            "port": agent.port,
            "version": "2c",
            "community": "private",
            "model": "apc",
            "timeout": 0.5,
            "retries": 0,
            **config,
        },
        "devices": [
            {"name": f"{name}.{n}", "labels": {"dut": f"{name}-dut{n}"}, "config": {"outlet": n}}
            for n in outlets
        ],
    }


def snmpget(agent: SnmpAgent, outlet: int) -> str:
    """The outlet state as the net-snmp tools see it: ``on`` or ``off``."""
    out = subprocess.run(
        agent.cli("snmpget", "-Oqv", f"{APC_STATUS}.{outlet}"),
        capture_output=True, text=True, env=agent.env, timeout=10, check=True,
    )  # fmt: skip
    return {"1": "on", "2": "off"}[out.stdout.strip()]


def cli_ok(h: LabHarness, *args: str) -> str:
    res = h.run_cli(*args)
    assert res.returncode == 0, f"labctl {' '.join(args)}: rc={res.returncode} {res.stderr}"
    return res.stdout.strip()


def cli_error(h: LabHarness, *args: str) -> tuple[int, str]:
    """Run a CLI command that must fail; the error is one line, without a traceback."""
    res = h.run_cli(*args)
    assert res.returncode != 0, f"labctl {' '.join(args)} succeeded: {res.stdout}"
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return res.returncode, lines[0]


def cli_devices(h: LabHarness) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in json.loads(cli_ok(h, "devices", "-o", "json"))}


@pytest.fixture
def lab_harness(harness: LabHarness) -> LabHarness:
    harness.start_broker()
    return harness


# -- SNMP PDU ---------------------------------------------------------------------------
def test_snmp_pdu_service_switches_real_outlets_from_the_cli(
    lab_harness: LabHarness, snmpd: SnmpAgent
) -> None:
    h = lab_harness
    for n in (1, 2, 3):
        snmpd.set_outlet("apc", n, False)
    svc = h.start_service(snmp_service(snmpd, "pdu1", [1, 2, 3]))

    devs = cli_devices(h)
    assert sorted(devs) == ["pdu1.1", "pdu1.2", "pdu1.3"]
    for name, dev in devs.items():
        assert dev["kind"] == "power" and dev["driver"] == "snmp" and dev["online"]
        assert dev["service"] == "pdu1" and dev["labels"]["site"] == "lab1"
        assert dev["labels"]["dut"] == f"pdu1-dut{name[-1]}"

    assert cli_ok(h, "power", "on", "pdu1.2") == "on"
    # the agent switched outlet 2, and only it; the one-shot lease left it on
    assert snmpget(snmpd, 2) == "on" and snmpd.outlet("apc", 2)
    assert snmpget(snmpd, 1) == "off" and snmpget(snmpd, 3) == "off"
    assert cli_ok(h, "power", "state", "pdu1.2") == "on"
    assert cli_ok(h, "power", "state", "pdu1.1") == "off"
    assert cli_devices(h)["pdu1.2"]["status"] == {"state": "on"}

    assert cli_ok(h, "power", "off", "pdu1.2") == "off"
    assert snmpget(snmpd, 2) == "off"
    assert cli_ok(h, "power", "state", "pdu1.2") == "off"

    assert cli_ok(h, "power", "on", "pdu1.3") == "on"
    lab = h.lab()
    assert lab.device("pdu1.3").state() == "on"  # read first: every earlier event is out
    with lab.event_stream("device.pdu1.3.status") as events:
        assert cli_ok(h, "power", "cycle", "pdu1.3", "--wait", "0.1") == "on"
        events.wait_for("device.pdu1.3.status", lambda b: b == {"state": "off"})
        events.wait_for("device.pdu1.3.status", lambda b: b == {"state": "on"})
    assert snmpget(snmpd, 3) == "on"
    assert cli_error(h, "power", "read", "pdu1.3") == (
        6,
        "error: pdu1.3: this power driver measures nothing",
    )
    snmpd.set_outlet("apc", 3, False)
    assert svc.alive()


def test_snmp_changes_outside_labctl_arrive_as_status_events(
    lab_harness: LabHarness, snmpd: SnmpAgent
) -> None:
    h = lab_harness
    for n in (4, 5):
        snmpd.set_outlet("apc", n, False)
    h.start_service(snmp_service(snmpd, "pdu2", [4, 5], poll_interval=0.05))
    lab = h.lab()
    wait_until(
        lambda: all(d["status"] == {"state": "off"} for d in lab.devices("pdu=pdu2")),
        10,
        "the first poll to report both outlets off",
    )
    with lab.event_stream("device.pdu2.*.status") as events:
        # a real SNMP SET from net-snmp's snmpset, not through labctl
        subprocess.run(
            snmpd.cli("snmpset", f"{APC_CMD}.5", "i", "1"),
            env=snmpd.env, capture_output=True, timeout=10, check=True,
        )  # fmt: skip
        ev = events.wait_for("device.pdu2.5.status", lambda b: b == {"state": "on"})
        assert ev["seq"] > 0
        # someone pressing the outlet's button: the agent's backing state changes
        snmpd.set_outlet("apc", 4, True)
        events.wait_for("device.pdu2.4.status", lambda b: b == {"state": "on"})
        snmpd.set_outlet("apc", 5, False)
        events.wait_for("device.pdu2.5.status", lambda b: b == {"state": "off"})
    status = {d["name"]: d["status"] for d in lab.devices("pdu=pdu2")}
    assert status == {"pdu2.4": {"state": "on"}, "pdu2.5": {"state": "off"}}
    snmpd.set_outlet("apc", 4, False)


def test_snmp_agent_down_fails_clearly_and_the_service_recovers(
    lab_harness: LabHarness, own_snmpd: SnmpAgent
) -> None:
    h, agent = lab_harness, own_snmpd
    cfg = snmp_service(agent, "pdu3", [1, 2])
    cfg["devices"][0]["config"]["poll_interval"] = 0.05  # pdu3.1 is watched, pdu3.2 is not
    svc = h.start_service(cfg)
    lab = h.lab()
    assert cli_ok(h, "power", "on", "pdu3.1") == "on"

    with lab.event_stream("device.pdu3.1.online") as events:
        agent.stop()
        ev = events.wait_for("device.pdu3.1.online", lambda b: b["online"] is False)
    where = f"127.0.0.1:{agent.port}"
    assert f"SNMP agent {where} refused the request" in ev["body"]["reason"]
    dev = cli_devices(h)["pdu3.1"]
    assert dev["online"] is False and "nothing listens there" in dev["offline_reason"]

    # reads and switches reach the driver and fail with its one-line DriverError (exit 6)
    rc, line = cli_error(h, "power", "state", "pdu3.1")
    assert rc == DriverError.exit_code == 6
    assert line == f"error: pdu3.1: SNMP agent {where} refused the request (nothing listens there)"
    rc, line = cli_error(h, "power", "on", "pdu3.2")
    assert rc == 6 and f"pdu3.2: SNMP agent {where}" in line
    # the polled outlet is known to be offline, so no one-shot lease is granted for it
    assert cli_error(h, "power", "on", "pdu3.1") == (
        4,
        f"error: 'pdu3.1' is offline: SNMP agent {where} refused the request (nothing listens there)",
    )
    # nothing leaked: the one-shot lease of the failed `power on` was given back
    assert lab.devices("name=pdu3.2")[0]["lease"] is None
    assert svc.alive()

    with lab.event_stream("device.pdu3.1.online") as events:
        agent.start(port=agent.port)  # same port, backing state kept
        events.wait_for("device.pdu3.1.online", lambda b: b["online"] is True)
    assert cli_ok(h, "power", "state", "pdu3.1") == "on"
    assert cli_ok(h, "power", "on", "pdu3.2") == "on"
    assert agent.outlet("apc", 2) and snmpget(agent, 2) == "on"
    assert cli_ok(h, "power", "off", "pdu3.1") == "off"
    assert snmpget(agent, 1) == "off"
    assert svc.alive()


def test_lease_end_resets_a_real_snmp_outlet(lab_harness: LabHarness, snmpd: SnmpAgent) -> None:
    h = lab_harness
    for n in (6, 7):
        snmpd.set_outlet("apc", n, False)
    cfg = snmp_service(snmpd, "pdu4", [6, 7])
    for dev in cfg["devices"]:
        dev["labels"]["dut"] = "board-a"  # one DUT: a lease takes both outlets
    cfg["devices"][1]["on_release"] = "keep"
    h.start_service(cfg)
    lab = h.lab()
    # read both first: any status event from before (a driver's first read) is out by now
    assert [lab.device(n).state() for n in ("pdu4.6", "pdu4.7")] == ["off", "off"]
    with lab.event_stream("device.pdu4.*.status") as events:
        with lab.lease("dut=board-a") as lease:
            assert sorted(lease.devices) == ["pdu4.6", "pdu4.7"]
            assert lease["pdu4.6"].on() == "on" and lease["pdu4.7"].on() == "on"
            assert snmpget(snmpd, 6) == "on" and snmpget(snmpd, 7) == "on"
        # released: the broker asks pdu4.6 (on_release: reset, the default) to power off
        events.wait_for("device.pdu4.6.status", lambda b: b == {"state": "off"})
    assert not snmpd.outlet("apc", 6) and snmpget(snmpd, 6) == "off"
    # pdu4.7 says on_release: keep; a read issued after the reset still finds it on
    assert lab.device("pdu4.7").state() == "on" and snmpget(snmpd, 7) == "on"
    assert all(d["lease"] is None for d in lab.devices("pdu=pdu4"))
    snmpd.set_outlet("apc", 7, False)


# -- Tasmota over MQTT --------------------------------------------------------------------
def plug_relay(broker: Broker, topic: str, timeout: float = 5.0) -> str:
    """Ask the plug itself for its relay with an independent MQTT client: ``ON``/``OFF``."""
    got: list[str] = []
    done = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)

    def on_connect(c: mqtt.Client, *_: Any) -> None:
        c.subscribe(f"stat/{topic}/POWER")

    def on_subscribe(c: mqtt.Client, *_: Any) -> None:
        c.publish(f"cmnd/{topic}/POWER", "")

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        got.append(msg.payload.decode())
        done.set()

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        assert done.wait(timeout), f"the plug on {topic} did not answer within {timeout}s"
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0]


def test_tasmota_service_switches_the_plug_and_follows_its_lwt(
    lab_harness: LabHarness, mosquitto: Broker, sim_plug: Callable[..., SimPlug]
) -> None:
    h = lab_harness
    topic = f"plug-{uuid.uuid4().hex[:8]}"  # the broker is shared: no retained crosstalk
    plug = sim_plug(mosquitto, topic)
    h.start_service({
        "service": "plugs", "kind": "power", "driver": "tasmota", "name": "plug1",
        "labels": {"dut": "rpi5-01"},
        "config": {"host": "127.0.0.1", "port": mosquitto.port, "topic": topic, "timeout": 2.0},
    })  # fmt: skip
    lab = h.lab()
    wait_until(
        lambda: lab.devices("name=plug1")[0]["status"] == {"state": "off"},
        10,
        "the plug's first stat to reach the broker",
    )

    assert cli_ok(h, "power", "on", "plug1") == "on"
    assert plug_relay(mosquitto, topic) == "ON"
    assert cli_ok(h, "power", "state", "plug1") == "on"
    assert cli_ok(h, "power", "off", "plug1") == "off"
    assert plug_relay(mosquitto, topic) == "OFF"

    with lab.event_stream("device.plug1.online") as events:
        plug.kill()  # no goodbye: mosquitto publishes the plug's will, LWT Offline
        events.wait_for("device.plug1.online", lambda b: b["online"] is False)
    dev = cli_devices(h)["plug1"]
    assert dev["online"] is False
    assert dev["offline_reason"] == f"plug reports Offline (tele/{topic}/LWT)"
    # an offline device is not leased (DESIGN §4), so the one-shot `power on` stops there
    assert cli_error(h, "power", "on", "plug1") == (
        4,
        f"error: 'plug1' is offline: plug reports Offline (tele/{topic}/LWT)",
    )

    with lab.event_stream("device.plug1.online") as events:
        plug.start()
        events.wait_for("device.plug1.online", lambda b: b["online"] is True)
    assert cli_devices(h)["plug1"]["online"] is True
    assert cli_ok(h, "power", "on", "plug1") == "on"
    assert plug_relay(mosquitto, topic) == "ON"


# -- shell commands -----------------------------------------------------------------------
def test_shell_service_through_the_sdk_with_a_lease(lab_harness: LabHarness) -> None:
    h = lab_harness
    relay = h.root / "relay"
    relay.write_text("off\n")
    h.start_service({
        "service": "relays", "kind": "power", "driver": "shell",
        "config": {"on": f"echo on > {relay}", "off": f"echo off > {relay}",
                   "state": f"grep -qx on {relay}", "timeout": 5},
        "devices": [
            {"name": "relay1", "labels": {"dut": "r1"}},
            {"name": "relay2", "labels": {"dut": "r2"},
             "config": {"on": "echo 'relay board not found' >&2; exit 3"}},
        ],
    })  # fmt: skip
    lab = h.lab()
    with lab.lease("name=relay1") as lease:
        assert lease.power.state() == "off"  # read first: every earlier event is out
        with lab.event_stream("device.relay1.status") as events:
            assert lease.power.on() == "on"
            assert relay.read_text() == "on\n"
            assert lease.power.state() == "on"
            relay.write_text("off\n")  # switched by hand: the next read sees it
            assert lease.power.state() == "off"
            assert lease.power.on() == "on"
            # every change was published, in order
            for state in ("on", "off", "on"):
                events.wait_for("device.relay1.status", lambda b, s=state: b == {"state": s})
            lease.release()  # what leaving the `with` does
            # the lease ended: the on-release reset ran the `off` command
            events.wait_for("device.relay1.status", lambda b: b == {"state": "off"})
    assert relay.read_text() == "off\n"

    with lab.lease("name=relay2") as lease, pytest.raises(DriverError) as err:
        lease.power.on()
    assert err.value.message == "relay2: on command failed (exit 3): relay board not found"
    assert err.value.details["exit"] == 3


def test_tasmota_status_follows_a_plug_that_returns_in_another_state(
    lab_harness: LabHarness, mosquitto: Broker, sim_plug: Callable[..., SimPlug]
) -> None:
    h = lab_harness
    topic = f"plug-{uuid.uuid4().hex[:8]}"
    plug = sim_plug(mosquitto, topic, "--initial", "on")
    h.start_service({
        "service": "plugs2", "kind": "power", "driver": "tasmota", "name": "plug2",
        "config": {"host": "127.0.0.1", "port": mosquitto.port, "topic": topic},
    })  # fmt: skip
    lab = h.lab()
    wait_until(lambda: lab.devices("name=plug2")[0]["status"] == {"state": "on"}, 10, "on")
    with lab.event_stream("device.plug2.*") as events:
        plug.kill()
        events.wait_for("device.plug2.online", lambda b: b["online"] is False)
        sim_plug(mosquitto, topic, "--initial", "off")  # power cut: it boots with the relay off
        events.wait_for("device.plug2.online", lambda b: b["online"] is True)
        events.wait_for("device.plug2.status", lambda b: b == {"state": "off"}, timeout=2)
