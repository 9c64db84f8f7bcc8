"""The bus end to end: real broker and service processes over real sockets."""

from __future__ import annotations

import signal

import msgpack
import pytest
import zmq

from labctl import protocol
from labctl.errors import (
    BadArguments,
    DeviceNotFound,
    DeviceOffline,
    LeaseRequired,
    MethodNotFound,
    SelectorError,
)

from .harness import LabHarness, power_service, wait_until


@pytest.fixture
def pdu(harness: LabHarness) -> LabHarness:
    harness.start_broker()
    harness.start_service(power_service("pdu1", outlets=3))
    return harness


def test_devices_register_with_labels_and_answer_queries(pdu: LabHarness) -> None:
    lab = pdu.lab()
    names = sorted(d["name"] for d in lab.devices())
    assert names == ["pdu1.1", "pdu1.2", "pdu1.3"]
    dev = lab.devices("dut=rpi4-02")[0]
    assert dev["name"] == "pdu1.2"
    assert dev["labels"] == {
        "site": "lab1", "dut": "rpi4-02", "board": "rpi4",
        "name": "pdu1.2", "kind": "power", "driver": "mock", "host": dev["labels"]["host"],
    }  # fmt: skip
    assert dev["online"] and dev["health"] == "good" and dev["lease"] is None
    assert [d["name"] for d in lab.devices("dut in (rpi4-01,rpi4-03), kind=power")] == [
        "pdu1.1",
        "pdu1.3",
    ]
    assert lab.devices("!board") == []
    with pytest.raises(SelectorError, match="column"):
        lab.devices("board=,x")


def test_rpc_reaches_the_driver_and_status_is_cached(pdu: LabHarness) -> None:
    lab = pdu.lab()
    with lab.event_stream("device.pdu1.1.*") as events, lab.lease("name=pdu1.1") as lease:
        assert lab.device("pdu1.1").state() == "off"  # read-only: no lease needed
        assert lease["pdu1.1"].on() == "on"
        assert lab.device("pdu1.1").state() == "on"
        ev = events.wait_for("device.pdu1.1.status", lambda b: b == {"state": "on"})
        assert ev["seq"] > 0 and ev["ts"] > 0
    # the broker caches the last status: listing needs no round trip to the service
    # (after release the mock resets to off, which is published too)
    wait_until(
        lambda: lab.devices("name=pdu1.1")[0]["status"] == {"state": "off"}, 5, "reset to off"
    )


def test_errors_are_typed(pdu: LabHarness) -> None:
    lab = pdu.lab()
    with pytest.raises(DeviceNotFound, match="nope"):
        lab.device("nope")
    with pytest.raises(MethodNotFound, match="has no method 'explode'.*cycle"):
        lab.client.call_device("pdu1.1", "explode")
    with pytest.raises(BadArguments, match="wait"), lab.lease("name=pdu1.1") as lease:
        lease.power.cycle(1, 2, 3)
    with pytest.raises(LeaseRequired, match="needs a lease"):
        lab.device("pdu1.2").on()
    with pytest.raises(MethodNotFound):
        _ = lab.device("pdu1.2").explode


def test_killed_service_goes_offline_and_calls_fail_clearly(harness: LabHarness) -> None:
    harness.start_broker()
    svc = harness.start_service(power_service("pdu9", outlets=1))
    lab = harness.lab()
    # online comes with the REGISTER; a service killed before it says anything more is a
    # drive-by whose devices are forgotten: wait for its first status (after the WELCOME)
    wait_until(lambda: lab.devices("name=pdu9.1")[0]["status"] is not None, 10, "its status")
    with lab.event_stream("device.pdu9.1.online") as events:
        svc.kill(signal.SIGKILL)
        ev = events.wait_for("device.pdu9.1.online", lambda b: b["online"] is False, timeout=10)
    assert "heartbeat" in ev["body"]["reason"]
    dev = lab.devices("name=pdu9.1")[0]
    assert dev["online"] is False and "not heard" in dev["offline_reason"]
    with pytest.raises(DeviceOffline, match="offline"):
        lab.device("pdu9.1").state()


def test_services_reregister_after_broker_restart(pdu: LabHarness) -> None:
    assert pdu.broker is not None
    pdu.broker.kill(signal.SIGKILL)
    pdu.start_broker()
    pdu.wait_online(["pdu1.1", "pdu1.2", "pdu1.3"], timeout=15)
    lab = pdu.lab()
    assert lab.device("pdu1.3").state() == "off"
    assert lab.devices("name=pdu1.3")[0]["status"] == {"state": "off"}  # replayed status


def test_duplicate_device_name_is_refused_naming_the_holder(pdu: LabHarness) -> None:
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(pdu.bus)
    try:
        header = {
            "service": "intruder",
            "host": "elsewhere",
        }
        devices = protocol.pack([{"name": "pdu1.2", "kind": "power"}])
        dealer.send_multipart(protocol.encode(protocol.REGISTER, header, devices))
        assert dealer.poll(5000)
        msg = protocol.decode(dealer.recv_multipart())
    finally:
        dealer.close()
    assert msg.mtype == protocol.ERROR
    assert msg.header["code"] == "duplicate-name"
    assert "'pdu1.2'" in msg.header["message"] and "'pdu1'" in msg.header["message"]
    # a second real service with the same names logs the refusal and keeps trying
    dup = pdu.start_service(power_service("pdu1b", outlets=1, dut_prefix="x").__or__(
        {"devices": [{"name": "pdu1.1"}]}), wait=False)  # fmt: skip
    wait_until(lambda: "already registered by service 'pdu1'" in dup.output(), 10, "refusal logged")
    assert dup.alive()
    assert pdu.lab().devices("name=pdu1.1")[0]["service"] == "pdu1"


GARBAGE = [
    [b"hello"],
    [b""],
    [protocol.TAG],
    [protocol.TAG, protocol.REQUEST],
    [protocol.TAG, b"\x7f", b"\x80"],
    [protocol.TAG, protocol.REQUEST, b"\xc1\xff\x00"],
    [protocol.TAG, protocol.REQUEST, msgpack.packb([1, 2, 3])],
    [protocol.TAG, protocol.REQUEST, msgpack.packb({"device": 5})],
    [protocol.TAG, protocol.CALL, msgpack.packb({"method": "devices", "id": 1}), b"\xc1"],
    [
        protocol.TAG,
        protocol.CALL,
        msgpack.packb({"method": "devices", "id": 1}),
        msgpack.packb([[], {"selector": 3}]),
    ],
    [protocol.TAG, protocol.REPLY, msgpack.packb({"id": 99999})],
    [protocol.TAG, protocol.STREAM_DATA, msgpack.packb({"sid": 12}), b"x"],
    [protocol.TAG, protocol.EVENT, msgpack.packb({"topic": "device.pdu1.1.status"}), b"x"],
    [protocol.TAG, protocol.HEARTBEAT, b"\x00" * (protocol.MAX_HEADER + 1)],
    [protocol.TAG] + [b"x"] * 40,
]


def test_malformed_frames_get_errors_and_the_broker_keeps_serving(pdu: LabHarness) -> None:
    import random

    rng = random.Random(7)
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(pdu.bus)
    try:
        batches = GARBAGE + [
            [rng.randbytes(rng.randint(0, 64)) for _ in range(rng.randint(1, 5))]
            for _ in range(200)
        ]
        for frames in batches:
            dealer.send_multipart(frames)
        dealer.send_multipart([b"LAB9", protocol.CALL, msgpack.packb({"id": 5, "method": "hello"})])
        errors = []
        while dealer.poll(1000):
            errors.append(protocol.decode(dealer.recv_multipart()))
        assert errors and all(m.mtype in (protocol.ERROR, protocol.STREAM_CLOSE) for m in errors)
        version = [m for m in errors if m.header.get("code") == "version"]
        assert version and "LAB9" in version[0].header["message"]
    finally:
        dealer.close()
    lab = pdu.lab()
    assert len(lab.devices()) == 3
    assert lab.device("pdu1.1").state() == "off"
    assert pdu.broker is not None and pdu.broker.alive()


def test_bus_works_over_tcp_loopback(tcp_harness: LabHarness) -> None:
    tcp_harness.start_broker()
    tcp_harness.start_service(power_service("tcppdu", outlets=2))
    lab = tcp_harness.lab()
    assert lab.hello()["events"].startswith("tcp://127.0.0.1:")
    with lab.event_stream("device.tcppdu.2.status") as events, lab.lease("name=tcppdu.2") as lease:
        lease.power.on()
        events.wait_for("device.tcppdu.2.status", lambda b: b["state"] == "on")
    assert sorted(d["name"] for d in lab.devices("site=lab1")) == ["tcppdu.1", "tcppdu.2"]


def test_a_slow_call_times_out_and_is_cancelled_on_the_service(pdu: LabHarness) -> None:
    from labctl.errors import Timeout

    lab = pdu.lab()
    svc = next(p for p in pdu.procs if "pdu1.yaml" in " ".join(p.argv))
    with lab.lease("name=pdu1.3") as lease:
        with pytest.raises(Timeout, match=r"pdu1.3.cycle: no reply within 0.3s"):
            lease["pdu1.3"].cycle(wait=2.0, timeout=0.3)
        # the timeout travels with the request: the service stops the call too
        wait_until(
            lambda: "call cancelled after its timeout" in svc.output(), 5, "the cancellation"
        )
        assert lease["pdu1.3"].state() == "off"


def test_a_service_with_hundreds_of_devices_registers(harness: LabHarness) -> None:
    harness.start_broker()
    harness.start_service(power_service("bigpdu", outlets=400))  # far more than one header holds
    lab = harness.lab()
    assert len(lab.devices("name in (bigpdu.1,bigpdu.400)")) == 2
    assert lab.device("bigpdu.400").state() == "off"


def test_a_malformed_re_registration_changes_nothing(pdu: LabHarness) -> None:
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(pdu.bus)
    try:
        good = protocol.pack([{"name": "ghost.1", "kind": "power"}])
        dealer.send_multipart(protocol.encode(protocol.REGISTER, {"service": "ghost"}, good))
        assert (
            dealer.poll(5000) and protocol.decode(dealer.recv_multipart()).mtype == protocol.WELCOME
        )
        dealer.send_multipart(
            protocol.encode(protocol.REGISTER, {"service": "ghost", "pid": "x"}, good)
        )
        assert dealer.poll(5000)
        err = protocol.decode(dealer.recv_multipart())
        assert (
            err.header["code"] == "protocol" and "malformed registration" in err.header["message"]
        )
        body = protocol.pack({"x": 1})
        dealer.send_multipart(
            protocol.encode(protocol.EVENT, {"topic": "device.ghost.1.progress"}, b"\xc1")
        )
        assert (
            dealer.poll(5000)
            and protocol.decode(dealer.recv_multipart()).header["code"] == "bad-request"
        )
        dealer.send_multipart(
            protocol.encode(protocol.EVENT, {"topic": "device.ghost.1.progress"}, body)
        )
    finally:
        dealer.close()  # and it goes silent: the heartbeat timeout must still notice
    lab = pdu.lab()
    wait_until(lambda: lab.devices("name=ghost.1")[0]["online"] is False, 10, "ghost.1 offline")
    assert [e["body"] for e in lab.client.call("events", topic="device.ghost.1.progress")] == [
        {"x": 1}
    ]


def test_the_group_label_is_the_brokers_and_write_access_leases_the_whole_group(
    harness: LabHarness,
) -> None:
    from .harness import LABCTL, Proc

    argv = [*LABCTL, "broker", "run", "--bus", harness.bus, "--events", harness.events,
            "--state", str(harness.root / "state"), "--heartbeat", str(harness.heartbeat),
            "--group-label", "rack"]  # fmt: skip
    harness.broker = Proc(argv, harness.root / "broker.log", harness.env).start()
    harness.procs.append(harness.broker)
    harness.start_service({"service": "pdu1", "kind": "power", "driver": "mock",
                           "devices": [{"name": "pdu1.1", "labels": {"rack": "r1"}},
                                       {"name": "pdu1.2", "labels": {"rack": "r1"}},
                                       {"name": "pdu1.3", "labels": {"rack": "r2"}}]})  # fmt: skip
    lab = harness.lab()
    assert lab.group_label() == "rack"
    assert lab.group_selector("pdu1.2") == "rack=r1"
    with lab.write_access("pdu1.1") as held:
        assert sorted(held.devices) == ["pdu1.1", "pdu1.2"]
        assert held["pdu1.2"].on() == "on"
    assert lab.devices("name=pdu1.2")[0]["lease"] is None
    assert lab.device("pdu1.2").state() == "on"  # released without the on-release reset
    assert lab.one_shot("pdu1.3", "on") == "on"  # leased just for the call
    assert lab.devices("name=pdu1.3")[0]["lease"] is None
