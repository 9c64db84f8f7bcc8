"""Limits per identity (issue 15 item 5, issue 10): event subscriptions counted on the broker's
XPUB (manual mode) per identity, and the other per-peer limits summed over an identity's
connections. Real broker and service processes; raw sockets play the hostile peers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import zmq

from labctl import protocol
from labctl.aio import AsyncLab
from labctl.broker import limits
from labctl.client import holder_identity
from labctl.errors import LimitExceeded
from labctl.events import EventStream
from labctl.lab import Lab

from ..harness import LabHarness, power_service, wait_until


@pytest.fixture
def lab1(harness: LabHarness) -> LabHarness:
    harness.start_broker()
    harness.start_service(power_service("pdu1", outlets=1))
    return harness


def _subscriber(harness: LabHarness, identity: str | None = None) -> zmq.Socket[bytes]:
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)  # else a SUB drops subscriptions past 1,000 queued
    if identity is not None:
        sock.setsockopt(zmq.METADATA, b"X-Labctl-User:" + identity.encode())
    sock.connect(harness.events)
    return sock


def _subscriptions(lab: Lab) -> dict[str, Any]:
    return lab.client.call("hello")["subscriptions"]  # type: ignore[no-any-return]


def test_a_peer_subscribing_past_its_limit_stays_bounded_and_others_still_get_events(
    lab1: LabHarness,
) -> None:
    lab = lab1.lab()
    hostile = _subscriber(lab1)  # no declared identity: anonymous@<address>
    extra = 1000
    try:
        for i in range(limits.MAX_SUBSCRIPTIONS + extra):
            hostile.setsockopt(zmq.SUBSCRIBE, b"device.h%d." % i)
        hostile.setsockopt(zmq.SUBSCRIBE, b"device.pdu1.1.")  # past the limit: not applied
        wait_until(lambda: _subscriptions(lab)["refused"] >= extra + 1, 20, "refusals")
        counted = _subscriptions(lab)
        assert counted["total"] == limits.MAX_SUBSCRIPTIONS, counted
        assert counted["identities"] == 1
        with EventStream(lab, "device.*") as events:  # a legit subscriber: live, and served
            live = limits.MAX_SUBSCRIPTIONS + 1  # its prefix (the sync topic comes and goes)
            wait_until(lambda: _subscriptions(lab)["total"] == live, 10, "the legit one counted")
            lab.set_health("pdu1.1", "maintenance", "t")
            ev = events.wait_for("device.pdu1.1.health", timeout=10)
            assert ev["body"]["health"] == "maintenance"
        assert not hostile.poll(200), "a refused subscription was applied"
    finally:
        hostile.close(0)
    # libzmq's cleanup of a closed connection reaches the broker and is charged back
    wait_until(lambda: _subscriptions(lab)["total"] == 0, 20, "subscriptions released")
    assert _subscriptions(lab)["identities"] == 0
    log = (lab1.root / "broker.log").read_text()
    assert log.count("event subscription refused") == 1, "logged once per identity"


def test_a_connection_that_keeps_subscribing_past_its_limit_is_cut_off(lab1: LabHarness) -> None:
    """libzmq keeps every topic a connection asked for, refused ones too, until it closes:
    past MAX_REFUSED_SUBSCRIPTIONS refusals the broker shuts that connection down."""
    lab = lab1.lab()
    hostile = _subscriber(lab1)
    hostile.setsockopt(zmq.RECONNECT_IVL, -1)  # stay cut off (an attacker may come back: again)
    asked = limits.MAX_SUBSCRIPTIONS + limits.MAX_REFUSED_SUBSCRIPTIONS + 10
    try:
        for i in range(asked):
            hostile.setsockopt(zmq.SUBSCRIBE, b"device.h%d." % i)
        wait_until(lambda: _subscriptions(lab)["cut_off"] == 1, 20, "the connection cut off")
        # its connection is gone: libzmq's cleanup releases what it held
        wait_until(lambda: _subscriptions(lab)["total"] == 0, 20, "subscriptions released")
        with EventStream(lab, "device.*") as events:  # the broker serves everyone else on
            lab.set_health("pdu1.1", "maintenance", "t")
            assert events.wait_for("device.pdu1.1.health", timeout=10)["body"]["health"]
    finally:
        hostile.close(0)
    log = (lab1.root / "broker.log").read_text()
    assert log.count("events connection cut off") == 1


def test_an_sdk_subscription_over_the_identitys_limit_fails_with_a_limit_error(
    lab1: LabHarness,
) -> None:
    lab = lab1.lab()
    me = holder_identity()  # what this process's SDK sockets declare
    mine = _subscriber(lab1, me)
    try:
        for i in range(limits.MAX_SUBSCRIPTIONS):
            mine.setsockopt(zmq.SUBSCRIBE, b"device.m%d." % i)
        wait_until(lambda: _subscriptions(lab)["total"] == limits.MAX_SUBSCRIPTIONS, 20, "count")
        with pytest.raises(LimitExceeded, match="too many event subscriptions") as refused:
            EventStream(lab, "*")
        assert isinstance(trio.run(_async_subscribe, lab1.bus), LimitExceeded)  # trio SDK too
        assert refused.value.details == {
            "limit": "event subscriptions",
            "max": limits.MAX_SUBSCRIPTIONS,
            "identity": me,
        }
        [row] = lab.client.call("events", since=60, topic="broker.limit")
        assert row["body"]["identity"] == me and row["body"]["limit"] == "subscriptions"
        # another identity is not affected by this one's limit
        other = _subscriber(lab1, "someone-else@host:1")
        try:
            other.setsockopt(zmq.SUBSCRIBE, b"device.")
            wait_until(lambda: _subscriptions(lab)["identities"] == 2, 10, "other counted")
        finally:
            other.close(0)
        # unsubscriptions from a live connection free their places at once (a stream takes
        # two: its prefix and, while it syncs, its sync topic)
        mine.setsockopt(zmq.UNSUBSCRIBE, b"device.m0.")
        mine.setsockopt(zmq.UNSUBSCRIBE, b"device.m1.")
        wait_until(lambda: _subscriptions(lab)["total"] == limits.MAX_SUBSCRIPTIONS - 2, 10, "")
        with EventStream(lab, "device.*") as events:
            lab.set_health("pdu1.1", "maintenance", "t")
            assert events.wait_for("device.pdu1.1.health", timeout=10)["body"]["reason"] == "t"
    finally:
        mine.close(0)
    wait_until(lambda: _subscriptions(lab)["total"] == 0, 20, "subscriptions released")


async def _async_subscribe(bus: str) -> Exception | None:
    """What subscribing with the trio SDK raised (None if it worked)."""
    async with AsyncLab(bus) as lab:
        try:
            async with lab.event_stream("device.*"):
                return None
        except LimitExceeded as exc:
            return exc


class _Dealer:
    """A bus DEALER declaring an identity, as the SDK does."""

    def __init__(self, bus: str, identity: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.METADATA, b"X-Labctl-User:" + identity.encode())
        self.sock.connect(bus)
        self.n = 0

    def acquire(self, selector: str) -> protocol.Message:
        """The first answer: queued (progress) or an error."""
        got = self.send(lambda n: protocol.Call.of("lease.acquire", {"selector": selector,
                                                                    "wait": 30}), answer=True)  # fmt: skip
        assert got is not None
        return got

    def send(self, make: Any, answer: bool = False) -> protocol.Message | None:
        """Send the message ``make(id)`` builds (ids go up); with ``answer``, wait for its."""
        self.n += 1
        msg = make(self.n)
        msg.id = self.n
        self.sock.send_multipart(msg.to_frames())
        return self._answer(self.n) if answer else None

    def hello(self) -> None:
        self.n += 1
        call = protocol.Call.of("hello", {})
        call.id = self.n
        self.sock.send_multipart(call.to_frames())
        assert self._answer(self.n).mtype == protocol.REPLY

    def _answer(self, rid: int) -> protocol.Message:
        while True:
            assert self.sock.poll(5000), "no answer"
            msg = protocol.decode(self.sock.recv_multipart())
            if msg.id == rid:
                return msg

    def close(self) -> None:
        self.sock.close(0)


def test_queued_lease_requests_are_limited_per_identity_across_its_connections(
    lab1: LabHarness,
) -> None:
    lab = lab1.lab()
    held = lab.client.call("lease.acquire", selector="name=pdu1.1", keepalive=False)
    half = limits.MAX_WAITERS // 2
    a, b = _Dealer(lab1.bus, "mallory@x:1"), _Dealer(lab1.bus, "mallory@x:1")
    other = _Dealer(lab1.bus, "trent@x:2")
    try:
        for _ in range(half):
            assert a.acquire("name=pdu1.1").mtype == protocol.REPLY  # progress: queued
        for _ in range(limits.MAX_WAITERS - half):
            assert b.acquire("name=pdu1.1").mtype == protocol.REPLY
        refused = b.acquire("name=pdu1.1")  # a second socket buys nothing
        assert refused.mtype == protocol.ERROR
        err = protocol.Error.parse(refused)
        assert err.code == "limit" and err.details == {
            "limit": "queued lease requests",
            "max": limits.MAX_WAITERS,
            "identity": "mallory@x:1",
        }
        assert "too many queued lease requests from mallory@x:1" in err.message
        assert other.acquire("name=pdu1.1").mtype == protocol.REPLY  # others still queue
    finally:
        for d in (a, b, other):
            d.close()
    lab.client.call("lease.release", id=held["id"])


def test_requests_in_flight_and_streams_are_limited_per_identity_across_its_connections(
    workdir: Path,
) -> None:
    harness = LabHarness(workdir, heartbeat=10)  # the raw service below sends no heartbeats
    try:
        harness.start_broker()
        sink = zmq.Context.instance().socket(zmq.DEALER)  # a service that never answers
        sink.setsockopt(zmq.LINGER, 0)
        sink.connect(harness.bus)
        interface = {"methods": {"state": {"mutating": False}}, "streams": {"log": {}}}
        devices = [{"name": "slow.1", "kind": "power", "interface": interface}]
        sink.send_multipart(protocol.Register("slow", devices).to_frames())
        assert sink.poll(5000) and protocol.decode(sink.recv_multipart()).mtype == protocol.WELCOME
        a, b = _Dealer(harness.bus, "mallory@x:1"), _Dealer(harness.bus, "mallory@x:1")
        try:
            for what, maximum, frames in (
                ("pending requests", limits.MAX_PENDING,
                 lambda n: protocol.Request.call("slow.1", "state", (), {}, None, None)),
                ("streams", limits.MAX_STREAMS,
                 lambda n: protocol.StreamOpen(n, "slow.1", "log", credit=1 << 20)),
            ):  # fmt: skip
                for dealer, count in ((a, maximum // 2), (b, maximum - maximum // 2)):
                    for _ in range(count):
                        dealer.send(frames)
                    dealer.hello()  # answered after the broker took every one before it
                err = b.send(frames, answer=True)
                assert err is not None and err.mtype == protocol.ERROR
                refused = protocol.Error.parse(err)
                assert refused.code == "limit", refused.message
                assert refused.details == {"limit": what, "max": maximum, "identity": "mallory@x:1"}
        finally:
            a.close()
            b.close()
            sink.close(0)
    finally:
        harness.close()
