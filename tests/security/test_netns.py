"""Two hosts talking CURVE across a veth (issue 15 item 7): the broker in one network namespace
binds the veth's address (not loopback, so CURVE is on without ``--curve``), a service and
clients in a second namespace reach it by that address. Only the addresses of the two
namespaces this test creates are used; the host's own interfaces are never bound.

Skipped where network namespaces cannot be made (not root, no ``ip``), as tests/can does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from labctl import keys

from ..harness import LabHarness, Proc, wait_until
from .test_curve import CurveKeys, entry

BROKER_IP, CLIENT_IP = "10.77.0.1", "10.77.0.2"
BUS, EVENTS = f"tcp://{BROKER_IP}:5550", f"tcp://{BROKER_IP}:5551"


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)


@pytest.fixture
def two_hosts() -> Iterator[tuple[str, str]]:
    """Namespaces (broker host, client host) joined by a veth: 10.77.0.1 <-> 10.77.0.2."""
    tag = f"{os.getpid() % 100000}{time.monotonic_ns() % 1000}"
    a, b = f"lc-sec-a-{tag}", f"lc-sec-b-{tag}"
    made = _ip("netns", "add", a)
    if made.returncode != 0:
        pytest.skip(
            f"cannot create a network namespace (needs root and ip netns): {made.stderr.strip()}"
        )
    try:
        assert _ip("netns", "add", b).returncode == 0
        veth = _ip(
            "link", "add", f"lcA{tag}"[:15], "type", "veth", "peer", "name", f"lcB{tag}"[:15]
        )
        if veth.returncode != 0:
            pytest.skip(f"cannot create a veth pair: {veth.stderr.strip()}")
        for ns, dev, addr in ((a, f"lcA{tag}"[:15], BROKER_IP), (b, f"lcB{tag}"[:15], CLIENT_IP)):
            for cmd in (["link", "set", dev, "netns", ns],
                        ["-n", ns, "addr", "add", f"{addr}/24", "dev", dev],
                        ["-n", ns, "link", "set", dev, "up"],
                        ["-n", ns, "link", "set", "lo", "up"]):  # fmt: skip
                done = _ip(*cmd)
                assert done.returncode == 0, done.stderr
        yield a, b
    finally:
        _ip("netns", "del", a)
        _ip("netns", "del", b)


def _in(ns: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-m", "labctl.cli"]


def _cli(harness: LabHarness, ns: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_in(ns), *args], capture_output=True, text=True, timeout=30,
                          env={**harness.env, **env})  # fmt: skip


def _start_broker(harness: LabHarness, ns: str, *extra: str) -> Proc:
    argv = [*_in(ns), "broker", "run", "--bus", BUS, "--events", EVENTS,
            "--state", str(harness.root / "state"), "--heartbeat", "0.2", *extra]  # fmt: skip
    broker = Proc(argv, harness.root / "broker.log", harness.env).start()
    harness.procs.append(broker)
    harness.broker = broker
    wait_until(lambda: "broker listening" in broker.output() or not broker.alive(), 15, "broker")
    assert broker.alive(), broker.output()
    return broker


def _start_service(harness: LabHarness, ns: str, cfg: dict[str, object]) -> Proc:
    path = harness.root / f"{cfg['service']}.yaml"
    path.write_text(yaml.safe_dump({"broker": BUS, **cfg}))
    proc = Proc([*_in(ns), "service", "run", str(path)], harness.root / f"{cfg['service']}.log",
                harness.env).start()  # fmt: skip
    harness.procs.append(proc)
    return proc


def _power(name: str, **more: object) -> dict[str, object]:
    return {"service": name, "kind": "power", "driver": "mock", "devices": [{"name": f"{name}.1"}],
            **more}  # fmt: skip


def test_a_service_and_clients_on_another_host_talk_curve_across_the_veth(
    workdir: Path, two_hosts: tuple[str, str]
) -> None:
    broker_host, client_host = two_hosts
    harness = LabHarness(workdir)
    try:
        ck = CurveKeys(workdir, broker_pair=False)  # the broker makes its pair on first start
        alice, pdu1 = ck.make("alice"), ck.make("pdu1", workdir)
        ck.make("mallory")
        ck.authorize(entry(alice, "alice"), entry(pdu1, "pdu1", "service", devices=["pdu1.*"]))
        broker = _start_broker(harness, broker_host)  # no --curve: the bind is not loopback
        assert keys.load(ck.broker_key).public.decode() in broker.output()  # "curve=KEY"
        harness.env.update({**ck.env(), "LABCTL_BROKER": BUS})
        harness.env.pop("LABCTL_CONNECT_TIMEOUT")  # a real network: the default wait

        service = _start_service(
            harness, client_host, _power("pdu1", broker_key="state/broker.key")
        )

        def online() -> bool:
            listing = _cli(harness, client_host, "devices", "-o", "name", "-l", "name=pdu1.1")
            return listing.returncode == 0 and listing.stdout.split() == ["pdu1.1"]

        wait_until(online, 20, "pdu1.1 online across the veth")
        on = _cli(harness, client_host, "power", "on", "pdu1.1")
        assert (on.returncode, on.stdout.strip()) == (0, "on"), on.stderr
        assert service.alive()

        mallory = _cli(harness, client_host, "devices", LABCTL_KEY="mallory")
        assert mallory.returncode == 5
        assert f"the broker at {BUS} refused key" in mallory.stderr
        keyless = _cli(harness, client_host, "devices", LABCTL_BROKER_KEY="")
        assert keyless.returncode == 5
        assert "requires CURVE keys: see `labctl keys`" in keyless.stderr
    finally:
        harness.close()


#: the dashboard's first WebSocket message (the snapshot), its ``insecure`` list, printed
SNAPSHOT_INSECURE = """
import json, socket, sys
from wsproto import ConnectionType, WSConnection
from wsproto.events import Request, TextMessage
ws = WSConnection(ConnectionType.CLIENT)
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.sendall(ws.send(Request(host="localhost", target="/ws")))
text = ""
while True:
    ws.receive_data(s.recv(65536))
    for ev in ws.events():
        if isinstance(ev, TextMessage):
            text += ev.data
            if ev.message_finished:
                print(json.dumps(json.loads(text).get("insecure")))
                sys.exit()
"""


def _dashboard_insecure(ns: str, port: int) -> list[str] | None:
    done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", SNAPSHOT_INSECURE,
                           str(port)], capture_output=True, text=True, timeout=30)  # fmt: skip
    return json.loads(done.stdout) if done.returncode == 0 else None


def test_insecure_serves_beyond_loopback_without_keys_and_says_so(
    workdir: Path, two_hosts: tuple[str, str]
) -> None:
    broker_host, client_host = two_hosts
    harness = LabHarness(workdir)
    try:
        broker = _start_broker(harness, broker_host, "--insecure", "--dashboard", "127.0.0.1:8780")
        assert "INSECURE: serving without CURVE beyond loopback" in broker.output()
        shown = wait_until(lambda: _dashboard_insecure(broker_host, 8780), 15, "the dashboard")
        assert shown == [BUS, EVENTS]  # the red INSECURE mark on every page lists them
        assert "curve=off" in broker.output()
        assert not (workdir / "state" / "broker.key").exists()
        harness.env.update({"LABCTL_BROKER": BUS, "LABCTL_BROKER_KEY": ""})
        _start_service(harness, client_host, _power("pdu2"))

        def on() -> bool:
            return _cli(harness, client_host, "power", "on", "pdu2.1").stdout.strip() == "on"

        wait_until(on, 20, "pdu2.1 on, with no keys anywhere")
    finally:
        harness.close()
