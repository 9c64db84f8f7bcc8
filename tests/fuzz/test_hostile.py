"""Hostile peers and faults (issue 10): bad fields answer bad-request naming the field, per-peer
limits, vanished readers, state changes whole with their audit row, full and read-only disks."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import zmq

from labctl import protocol
from labctl.errors import BadArguments, BadRequest, LabError, LimitExceeded, StorageFull

from ..harness import LabHarness, power_service, wait_until
from ..test_streams import Pty, serial_service


@pytest.fixture
def lab1(harness: LabHarness) -> LabHarness:
    harness.start_broker()
    harness.start_service(power_service())
    return harness


class Raw:
    """A DEALER that sends what no SDK would."""

    def __init__(self, bus: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(bus)
        self.n = 0

    def call(self, method: str, **kwargs: Any) -> protocol.Message:
        self.n += 1
        call = protocol.Call.of(method, kwargs)
        call.id = self.n
        return self.ask(call.to_frames())

    def ask(self, frames: list[Any], timeout_ms: int = 5000) -> protocol.Message:
        """The answer to ``frames`` (queue reminders for earlier requests are skipped)."""
        rid = protocol.decode(frames).id
        self.sock.send_multipart(frames)
        while True:
            assert self.sock.poll(timeout_ms), "no answer"
            msg = protocol.decode(self.sock.recv_multipart())
            if msg.id == rid or rid is None:
                return msg

    def close(self) -> None:
        self.sock.close(0)


def _error(msg: protocol.Message) -> protocol.Error:
    assert msg.mtype == protocol.ERROR, msg
    return protocol.Error.parse(msg)


BAD_CALLS = [
    ("events", {"since": "1h"}, "since"),
    ("events", {"since": float("nan")}, "since"),
    ("events", {"limit": 2**63}, "limit"),
    ("events", {"limit": "10"}, "limit"),
    ("events", {"topic": ["a"]}, "topic"),
    ("audit", {"limit": float("inf")}, "limit"),
    ("devices", {"selector": 5}, "selector"),
    ("devices", {"selector": {"kind": "power"}}, "selector"),
    ("device", {"name": ["pdu1.1"]}, "name"),
    ("health", {"name": "pdu1.1", "health": ["bad"]}, "health"),
    ("health", {"name": "pdu1.1", "health": "bad", "reason": 2**64 - 1}, "reason"),
    ("lease.acquire", {"selector": ["x"]}, "selector"),
    ("lease.acquire", {"selector": "name=pdu1.1", "duration": float("inf")}, "duration"),
    ("lease.acquire", {"selector": "name=pdu1.1", "wait": "soon"}, "wait"),
    ("lease.acquire", {"selector": "name=pdu1.1", "keepalive": "yes"}, "keepalive"),
    ("lease.release", {"id": ["x"]}, "id"),
    ("lease.release", {"id": {"a": 1}, "force": True, "reason": "r"}, "id"),
    ("lease.extend", {"id": "x", "duration": -(2**63)}, "duration"),
    ("lease.keepalive", {"ids": "abc"}, "ids"),
    ("lease.keepalive", {"ids": [1]}, "ids[0]"),
    ("lease.show", {"id": 2**63}, "id"),
    ("sync", {"token": {"t": 1}}, "token"),
]


def test_every_bad_call_argument_is_a_bad_request_naming_it(lab1: LabHarness) -> None:
    raw = Raw(lab1.bus)
    try:
        for method, kwargs, field in BAD_CALLS:
            err = _error(raw.call(method, **kwargs))
            assert err.code == "bad-request", (method, kwargs, err)
            assert err.details == {"field": field}, (method, kwargs, err)
            assert field.split("[")[0] in err.message
        err = _error(raw.call("lease.acquire", selector="name=pdu1.1", bogus=1))
        assert err.code == "bad-arguments"
    finally:
        raw.close()
    assert "handler failed" not in lab1.broker.output()  # type: ignore[union-attr]


def test_bad_header_fields_are_bad_requests_naming_the_field(lab1: LabHarness) -> None:
    raw = Raw(lab1.bus)
    try:
        for lease in ([1], {"a": 1}, 5, b"x"):
            frames = protocol.encode(protocol.REQUEST, {"id": 1, "device": "pdu1.1",
                                     "method": "on", "lease": lease}, protocol.pack([[], {}]))  # fmt: skip
            err = _error(raw.ask(frames))
            assert (err.code, err.details) == ("bad-request", {"field": "lease"}), err
        for credit in (2**63, -1, "4096", 1.5):
            header = {"id": 2, "device": "pdu1.1", "stream": "console", "credit": credit}
            err = _error(raw.ask(protocol.encode(protocol.STREAM_OPEN, header)))
            assert (err.code, err.details) == ("bad-request", {"field": "credit"}), err
        # an inf/NaN timeout reads as the default instead of a deadline never reached
        for timeout in (float("inf"), float("nan"), -1, "5"):
            frames = protocol.encode(protocol.REQUEST, {"id": 3, "device": "pdu1.1",
                                     "method": "state", "timeout": timeout}, protocol.pack([[], {}]))  # fmt: skip
            assert raw.ask(frames).mtype == protocol.REPLY
    finally:
        raw.close()


def test_driver_arguments_are_checked_against_the_signature_first(lab1: LabHarness) -> None:
    lab = lab1.lab()
    with lab.lease("name=pdu1.1") as lease:
        for wait in ([1, 2], "2", float("inf"), True):
            with pytest.raises(BadArguments, match="wait"):
                lease["pdu1.1"].cycle(wait=wait)
        assert lease["pdu1.1"].cycle(wait=0) == "on"


def test_force_release_and_health_without_who_are_whole_with_their_audit_row(
    lab1: LabHarness,
) -> None:
    lab = lab1.lab()
    info = lab.client.call("lease.acquire", selector="name=pdu1.1", keepalive=False)
    released = lab.client.call(
        "lease.release", id=info["ref"], force=True, reason="wedged", who=None
    )
    assert released == {"ref": info["ref"], "released": True}
    dev = lab.devices("name=pdu1.1")[0]
    assert dev["lease"] is None and dev["holder"] is None
    assert lab.client.call("health", name="pdu1.2", health="bad", reason="t", who=None)
    with pytest.raises(BadRequest):  # refused whole: no change, no audit row
        lab.client.call("health", name="pdu1.2", health="broken", reason="t")
    rows = lab.client.call("audit", limit=3)
    assert [r["action"] for r in rows[:2]] == ["device.health", "lease.ended"]
    assert rows[0]["why"] == "bad t" and rows[1]["why"] == "forced wedged"
    assert lab.devices("name=pdu1.2")[0]["health"] == "bad"


def test_per_peer_limits_answer_a_typed_error(lab1: LabHarness) -> None:
    from labctl.broker import limits

    lab = lab1.lab()
    held = lab.client.call("lease.acquire", selector="name=pdu1.1", keepalive=False)
    raw = Raw(lab1.bus)
    try:  # queued lease requests
        for _ in range(limits.MAX_WAITERS):
            raw.n += 1
            call = protocol.Call.of("lease.acquire", {"selector": "name=pdu1.1", "wait": 30})
            call.id = raw.n
            assert raw.ask(call.to_frames()).mtype == protocol.REPLY  # progress: queued
        err = _error(raw.call("lease.acquire", selector="name=pdu1.1", wait=30))
        assert err.code == "limit" and err.details["limit"] == "queued lease requests"
        assert isinstance(err.exception(), LimitExceeded)
    finally:
        raw.close()
    lab.client.call("lease.release", id=held["id"])
    reg = Raw(lab1.bus)
    try:  # devices in one registration
        devices = [{"name": f"many-{i}", "kind": "power"} for i in range(limits.MAX_DEVICES + 1)]
        err = _error(reg.ask(protocol.Register("many", devices).to_frames()))
        assert err.code == "limit" and err.details["limit"] == "devices"
    finally:
        reg.close()


def test_a_peer_that_registers_and_vanishes_leaves_no_devices_behind(lab1: LabHarness) -> None:
    lab = lab1.lab()
    for i in range(20):
        raw = Raw(lab1.bus)
        reply = raw.ask(protocol.Register(f"drive-by-{i}", [{"name": f"rogue-{i}"}]).to_frames())
        assert reply.mtype == protocol.WELCOME
        raw.close()
    wait_until(
        lambda: not [d for d in lab.devices() if d["name"].startswith("rogue-")],
        10,
        "rogue devices to be forgotten",
    )
    assert {d["name"] for d in lab.devices()} == {"pdu1.1", "pdu1.2"}


READERS = """
import sys, zmq
from labctl import protocol
ctx = zmq.Context.instance()
socks = []
for i in range(int(sys.argv[2])):
    s = ctx.socket(zmq.DEALER)
    s.connect(sys.argv[1])
    s.send_multipart(protocol.StreamOpen(i, "ser1", "console", credit=1 << 62).to_frames())
    socks.append(s)
for s in socks:
    assert s.poll(10000)
    assert protocol.decode(s.recv_multipart()).mtype == protocol.REPLY
print("open", flush=True)
sys.stdin.read()
"""


def test_readers_that_die_without_closing_leave_no_routes_or_stream_tasks(
    harness: LabHarness,
) -> None:
    pty = Pty()
    try:
        harness.start_broker()
        harness.start_service(serial_service("ser1", pty.path))
        lab = harness.lab()
        n = 300
        proc = subprocess.Popen(
            [sys.executable, "-c", READERS, harness.bus, str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
            assert lab.device("ser1").status()["streams"] == n
            proc.kill()
            proc.wait()
            # nothing is written to the console: the broker finds the dead readers itself
            wait_until(lambda: lab.device("ser1").status()["streams"] == 0, 15, "routes to close")
        finally:
            proc.kill()
            proc.wait()
    finally:
        pty.close()


def test_lab_error_classes_for_the_new_codes() -> None:
    assert isinstance(protocol.Error(1, "storage-full", "x").exception(), StorageFull)
    assert isinstance(protocol.Error(1, "limit", "x").exception(), LimitExceeded)
    assert issubclass(LimitExceeded, BadRequest) and issubclass(StorageFull, LabError)


class _Outbox:
    """What the stream router sends, by peer; ``gone`` peers cannot be sent to."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, protocol.Message]] = []
        self.gone: set[bytes] = set()

    def send(self, ident: bytes, frames: list[Any]) -> bool:
        if ident in self.gone:
            return False
        self.sent.append((ident, protocol.decode(frames)))
        return True


def _router() -> tuple[Any, _Outbox]:
    from labctl.broker.access import LeaseAccess
    from labctl.broker.metrics import BrokerMetrics
    from labctl.broker.registry import Registry
    from labctl.broker.streams import StreamRouter

    registry = Registry()
    interface = {"methods": {}, "streams": {"console": {"writable": False}}}
    registry.register(b"svc", protocol.Register("s", [{"name": "con", "interface": interface}]))
    outbox = _Outbox()
    return StreamRouter(registry, LeaseAccess({}, "dut"), outbox, BrokerMetrics()), outbox  # type: ignore[arg-type]


def _msg(frames: list[Any]) -> protocol.Message:
    return protocol.decode(frames)


def test_the_broker_honours_a_few_mib_of_credit_whatever_a_reader_grants() -> None:
    from labctl.broker.limits import MAX_STREAM_CREDIT

    router, out = _router()
    router.handle(
        b"cli", _msg(protocol.StreamOpen(1, "con", "console", credit=1 << 62).to_frames())
    )
    offer = protocol.StreamOffer.parse(out.sent[-1][1])
    assert offer.credit == MAX_STREAM_CREDIT
    router.handle(b"svc", _msg(protocol.StreamAccept(offer.sid).to_frames()))
    router.handle(b"cli", _msg(protocol.StreamCredit(offer.sid, 1 << 62).to_frames()))
    assert [m for _, m in out.sent if m.mtype == protocol.STREAM_CREDIT] == []  # nothing more
    data = protocol.StreamData(offer.sid, [b"x" * 4096]).to_frames()
    router.handle(b"svc", _msg(data))
    router.handle(b"cli", _msg(protocol.StreamCredit(offer.sid, 1 << 62).to_frames()))
    grant = protocol.StreamCredit.parse(out.sent[-1][1])
    assert (out.sent[-1][0], grant.credit) == (b"svc", 4096)  # only what was used
    for _ in range(MAX_STREAM_CREDIT // 4096):
        router.handle(b"svc", _msg(data))
    assert offer.sid in router.routes
    router.handle(b"svc", _msg(data))  # past what the broker passed on: cut off
    assert offer.sid not in router.routes


def test_a_vanished_readers_route_is_closed_on_both_ends() -> None:
    router, out = _router()
    router.handle(b"cli", _msg(protocol.StreamOpen(1, "con", "console", credit=10).to_frames()))
    sid = protocol.StreamOffer.parse(out.sent[-1][1]).sid
    router.handle(b"svc", _msg(protocol.StreamAccept(sid).to_frames()))
    router.sweep(60.0)  # heard from just now
    assert sid in router.routes
    router.sweep(0.0)  # silent, but it answers: pinged, kept
    assert sid in router.routes and out.sent[-1][0] == b"cli"
    out.gone.add(b"cli")
    router.sweep(0.0)
    assert sid not in router.routes and router.by_client == {}
    close = protocol.StreamClose.parse(out.sent[-1][1])
    assert out.sent[-1][0] == b"svc" and close.reason == "client went away"
