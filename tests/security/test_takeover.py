"""What a security review of the CURVE and roles work found, each closed (session 3): a device
under a lease cannot change hands to another service identity, a service never sees a lease
id, a routing id that comes back on another connection does not inherit the old one's
identity, services cannot publish the broker's own device events, connections that never
finish their handshake are closed, and contradictory or unsafe key settings are refused."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from labctl import core, keys, protocol
from labctl.errors import ConfigError
from labctl.lab import Lab

from ..fuzz.test_hostile import Raw, _error
from ..harness import LabHarness, power_service, wait_until
from .test_curve import CurveKeys, entry, start_curve_broker

INTERFACE = {"methods": {"on": {"mutating": True, "params": []}}, "streams": {}}


@pytest.fixture
def two_services(
    tcp_harness: LabHarness, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[LabHarness, CurveKeys]]:
    """A CURVE broker; svca and svcb may both register a.*; uma is a user, vic a viewer."""
    ck = CurveKeys(tcp_harness.root)
    found = {name: ck.make(name) for name in ("alice", "uma", "vic")}
    found |= {name: ck.make(name, tcp_harness.root) for name in ("svca", "svcb")}
    ck.keys = found  # type: ignore[attr-defined]
    ck.authorize(
        entry(found["alice"], "alice"),
        entry(found["uma"], "uma", "user"),
        entry(found["vic"], "vic", "viewer"),
        entry(found["svca"], "svca", "service", devices=["a.*"]),
        entry(found["svcb"], "svcb", "service", devices=["a.*"]),
    )
    start_curve_broker(tcp_harness, ck, monkeypatch)
    yield tcp_harness, ck


def _as(harness: LabHarness, ck: CurveKeys, name: str, *args: str) -> Any:
    return harness.run_cli(*args, env=ck.env(name))


def test_a_leased_device_cannot_change_hands_to_another_service_identity(
    two_services: tuple[LabHarness, CurveKeys],
) -> None:
    harness, ck = two_services
    admin = harness.lab()
    first = harness.start_service(power_service("a", outlets=1, key="svca.key_secret"))
    got = _as(harness, ck, "uma", "lease", "acquire", "name=a.1", "-o", "id")
    assert got.returncode == 0, got.stderr
    first.stop()  # its service says goodbye: a.1 goes offline, uma's lease stays
    harness.wait_online(["a.1"], online=False)

    harness.start_service(power_service("a", outlets=1, key="svcb.key_secret"), wait=False)

    def refused() -> list[dict[str, Any]]:
        rows = admin.client.call("audit", limit=100)
        return [r for r in rows if r["action"] == "not-allowed" and r["who"] == "svcb"]

    row = wait_until(refused, 20, "svcb's registration refused")[0]
    assert row["why"] == (
        "svcb (service) may not register devices 'a.1': it is leased, and registered by svca"
    )
    [dev] = admin.devices()
    assert dev["online"] is False and dev["holder"] == "uma"


def test_a_service_never_sees_the_lease_id_a_call_came_with(lab_open: LabHarness) -> None:
    service = Raw(lab_open.bus)  # plays a service, and reads what the broker forwards
    try:
        welcome = service.ask(
            protocol.Register("raw", [{"name": "r.1", "interface": INTERFACE}]).to_frames()
        )
        assert welcome.mtype == protocol.WELCOME
        with Lab(lab_open.bus, timeout=5) as lab, lab.lease("name=r.1") as lease:
            rid, frames = core.Requests().frames(
                protocol.Request.call("r.1", "on", (), {}, lease.id), 5
            )
            client = Raw(lab_open.bus)
            try:
                client.sock.send_multipart(frames)
                assert service.sock.poll(5000)
                forwarded = protocol.Request.parse(protocol.decode(service.sock.recv_multipart()))
            finally:
                client.close()
        assert forwarded.method == "on" and forwarded.lease is None
    finally:
        service.close()


@pytest.fixture
def lab_open(harness: LabHarness) -> LabHarness:
    harness.start_broker()
    return harness


def test_a_service_cannot_publish_the_brokers_own_device_events(lab_open: LabHarness) -> None:
    service = Raw(lab_open.bus)
    try:
        service.ask(protocol.Register("raw", [{"name": "r.1", "interface": INTERFACE}]).to_frames())
        for what in ("health", "forced", "removed"):
            event = protocol.Event.of(f"device.r.1.{what}", {"health": "bad"})
            err = _error(service.ask(event.to_frames()))
            assert err.code == "bad-request"
            assert "the broker publishes device forced, health, removed events" in err.message
    finally:
        service.close()


def test_a_routing_id_that_comes_back_on_another_connection_is_that_connection(
    two_services: tuple[LabHarness, CurveKeys],
) -> None:
    harness, ck = two_services
    server = keys.public_key(str(ck.broker_key))

    def dealer(name: str) -> Raw:
        raw = Raw.__new__(Raw)
        raw.sock = zmq.Context.instance().socket(zmq.DEALER)
        raw.sock.setsockopt(zmq.LINGER, 0)
        raw.sock.setsockopt(zmq.ROUTING_ID, b"\x00chosen-id")  # a peer may choose its own
        pair = keys.own_key(name)
        assert pair.secret is not None
        keys.apply(raw.sock, keys.ClientKeys(server, pair.public, pair.secret))
        raw.sock.connect(harness.bus)
        raw.n = 0
        return raw

    admin = dealer("alice")
    assert admin.call("hello").mtype == protocol.REPLY
    admin.close()
    viewer = dealer("vic")  # the same routing id, once alice's connection is gone
    try:
        msg = wait_until(lambda: _answer_when_connected(viewer), 10, "vic connected")
        err = _error(msg)
        assert err.code == "not-allowed" and err.details["identity"] == "vic", err.message
    finally:
        viewer.close()


def _answer_when_connected(raw: Raw) -> protocol.Message | None:
    """lease.acquire as this connection (None while its routing id is still the old one's:
    libzmq refuses a routing id that is taken; it reconnects)."""
    try:
        return raw.call("lease.acquire", selector="name=a.1", wait=0)
    except AssertionError:  # no answer yet
        return None


def test_connections_that_never_finish_a_handshake_are_closed(tcp_harness: LabHarness) -> None:
    import socket

    broker = tcp_harness.start_broker()

    def descriptors() -> int:
        return len(os.listdir(f"/proc/{broker.pid}/fd"))

    before = descriptors()
    host, port = tcp_harness.bus.removeprefix("tcp://").rsplit(":", 1)
    silent = [socket.create_connection((host, int(port))) for _ in range(50)]
    try:
        wait_until(lambda: descriptors() >= before + 40, 10, "the connections accepted")
        # closed after the handshake interval (5 s), not libzmq's 30 s
        wait_until(lambda: descriptors() <= before + 5, 20, "the silent connections closed")
    finally:
        for sock in silent:
            sock.close()


def test_curve_and_insecure_together_and_a_readable_secret_are_refused(
    tcp_harness: LabHarness, tmp_path: Path
) -> None:
    r = tcp_harness.run_cli("broker", "run", "--curve", "--insecure", "--state", str(tmp_path))
    assert r.returncode == 2
    assert r.stderr == "error: --curve and --insecure contradict each other: give one of them\n"
    _, secret = keys.generate("loose", tmp_path)
    keys.load(secret)  # 0600 as made
    secret.chmod(0o640)
    with pytest.raises(ConfigError, match=r"a secret key others may read is not used: `chmod 600"):
        keys.load(secret)


def test_narrowed_globs_take_a_registered_name_away_at_the_reload(
    two_services: tuple[LabHarness, CurveKeys],
) -> None:
    harness, ck = two_services
    admin = harness.lab()
    harness.start_service(power_service("a", outlets=2, key="svca.key_secret"))
    found = ck.keys  # type: ignore[attr-defined]
    ck.authorize(
        entry(found["alice"], "alice"),
        entry(found["svca"], "svca", "service", devices=["a.1"]),  # a.2 no longer
    )

    def offline() -> bool:
        return not any(d["online"] for d in admin.devices())

    wait_until(offline, 20, "svca's devices offline")

    def refused_again() -> bool:  # it registers again, and is refused for a.2
        rows = admin.client.call("audit", limit=100)
        return any(r["who"] == "svca" and r["target"] == "a.2" for r in rows)

    wait_until(refused_again, 20, "svca's registration of a.2 refused")
    assert offline()
