"""A seeded mutator over the typed LAB1 messages, and a run of it against a live lab.

``Mutator(seed).next()`` gives one message (a frame list, as a DEALER sends it): mostly a
valid envelope of a real message type (the typed classes of ``labctl.protocol``) with one or
more header fields or call arguments replaced by hostile values (wrong types, nil, ints at
and past 2^63, inf, NaN, long strings, nested maps); sometimes a truncated or oversized
frame, a random number of frames, a wrong tag or type. ``run(...)`` sends N of them from many
identities (DEALER sockets) to a live broker that has a registered service, while a legit
client calls through it, and counts what came back. Used by tests/fuzz/test_fuzz.py (~50k)
and bench/fuzz.py (1M).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from labctl import protocol as p

#: values that broke handlers once: wrong types, edges of msgpack ints, non-finite floats
HOSTILE: list[Any] = [
    None, True, False, 0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63),
    0.0, -0.5, 1e308, float("inf"), float("-inf"), float("nan"), "", "x", "x" * 5000,
    "é\u0000\ud7ff", b"", b"\xff" * 40, [], [1, "a"], [[[]]], {}, {"a": 1}, {1: 2},
    {"nested": {"deep": [None]}}, "name=pdu1.1", "kind=power and (", "*", "lease.acquire",
]  # fmt: skip

CALLS: dict[str, dict[str, Any]] = {
    "hello": {},
    "devices": {"selector": "kind=power"},
    "device": {"name": "pdu1.1"},
    "events": {"since": 60, "topic": "device.*", "limit": 10},
    "sync": {"token": "t"},
    "health": {"name": "fz-none", "health": "good", "reason": "fuzz"},
    "audit": {"limit": 5},
    "lease.acquire": {"selector": "name=fz-nothing", "duration": 5, "wait": 0},
    "lease.release": {"id": "nope", "force": True, "reason": "fuzz", "who": None},
    "lease.extend": {"id": "nope", "duration": 5},
    "lease.keepalive": {"ids": ["nope"]},
    "lease.list": {},
    "lease.show": {"id": "nope"},
}
METHODS = ["state", "read", "on", "off", "cycle", "nope", "__reset__"]
DEVICES = ["pdu1.1", "pdu1.2", "fz-none"]


class Mutator:
    """Seeded: the same seed gives the same messages (a failure can be replayed)."""

    def __init__(self, seed: int, max_payload: int = p.MAX_PAYLOAD) -> None:
        self.rng = random.Random(seed)
        self.max_payload = max_payload
        self.n = 0

    def hostile(self) -> Any:
        r = self.rng
        if r.random() < 0.8:
            return r.choice(HOSTILE)
        return r.choice([r.randint(-(2**63), 2**64 - 1), r.random() * 10**r.randint(0, 300),
                         r.randbytes(r.randint(0, 64)), str(r.random())])  # fmt: skip

    def template(self) -> tuple[bytes, dict[str, Any], list[Any]]:
        """A valid message: type, header, payload frames."""
        r = self.rng
        kind = r.randrange(11)
        rid = self.n
        if kind == 0:
            name = f"fz-{r.randrange(50)}"
            devices = [{"name": name, "kind": "power", "interface": {"methods": {"on": {}}}}]
            return p.REGISTER, {"service": name, "host": "fz", "pid": 1}, [p.pack(devices)]
        if kind == 1:
            return p.HEARTBEAT, r.choice([{}, {"role": "service"}]), []
        if kind == 2:
            args = r.choice([[[], {}], [[1.5], {}], [[], {"wait": 0.01}]])
            header = {"id": rid, "device": r.choice(DEVICES), "method": r.choice(METHODS),
                      "lease": None, "timeout": 5}  # fmt: skip
            return p.REQUEST, header, [p.pack(args)]
        if kind in (3, 4, 5):
            name = r.choice(list(CALLS))
            return (
                p.CALL,
                {"id": rid, "method": name, "timeout": 5},
                [p.pack([[], dict(CALLS[name])])],
            )
        if kind == 6:
            header = {"id": rid, "device": "pdu1.1", "stream": "console", "write": False,
                      "lease": None, "args": {}, "credit": 4096, "timeout": 5}  # fmt: skip
            return p.STREAM_OPEN, header, []
        if kind == 7:
            return p.STREAM_DATA, {"sid": r.randrange(1 << 41)}, [r.randbytes(r.randint(0, 100))]
        if kind == 8:
            return p.STREAM_CREDIT, {"sid": r.randrange(1 << 41), "credit": 1 << 20}, []
        if kind == 9:
            return p.STREAM_CLOSE, {"sid": r.randrange(1 << 41), "reason": "fz"}, []
        topic = f"device.fz-{r.randrange(50)}.{r.choice(['status', 'online'])}"
        return p.EVENT, {"topic": topic}, [p.pack({"online": True})]

    def next(self) -> list[Any]:
        """One message to send (frames after the routing id)."""
        self.n += 1
        r = self.rng
        roll = r.random()
        mtype, header, payload = self.template()
        if roll < 0.55:  # mutate fields of a valid envelope
            for _ in range(r.randint(1, 3)):
                self._mutate_field(mtype, header, payload)
        elif roll < 0.62:  # drop or add keys
            if header and r.random() < 0.5:
                header.pop(r.choice(list(header)))
            else:
                header[r.choice(["x", "sid", "id", "credit", "lease"])] = self.hostile()
        elif roll < 0.70:  # truncated frames
            frames = [p.TAG, mtype, p.pack(header), *payload]
            frames = frames[: r.randint(1, len(frames))]
            if r.random() < 0.5:
                i = r.randrange(len(frames))
                frames[i] = frames[i][: r.randint(0, max(0, len(frames[i]) - 1))]
            return frames
        elif roll < 0.74:  # random frame counts of random bytes
            return [r.randbytes(r.randint(0, 12)) for _ in range(r.randint(1, 20))]
        elif roll < 0.78:  # wrong tags and types
            tag = r.choice([b"LAB2", b"LAB0", b"XXXX", b"", b"LAB1LAB1LAB1"])
            mt = r.choice([mtype, b"\x00", b"\xff", b"", p.WELCOME, b"\x10\x10"])
            return [tag if r.random() < 0.7 else p.TAG, mt, p.pack(header), *payload]
        elif roll < 0.79:  # oversized header or body (sizes just past the limits)
            if r.random() < 0.9:
                header["pad"] = "x" * (p.MAX_HEADER + 1)
            else:
                payload = [b"\0" * (self.max_payload + 1)]
        elif roll < 0.82:  # a body that is not msgpack / not [args, kwargs]
            payload = [r.choice([b"\xc1", r.randbytes(8), p.pack({"a": 1}), p.pack([1, 2])])]
        return [p.TAG, mtype, p.pack(header), *payload]

    def _mutate_field(self, mtype: bytes, header: dict[str, Any], payload: list[Any]) -> None:
        r = self.rng
        if mtype in (p.CALL, p.REQUEST) and payload and r.random() < 0.6:
            try:
                args, kwargs = p.unpack(payload[0])
            except Exception:
                return
            if kwargs and r.random() < 0.8:
                kwargs[r.choice(list(kwargs))] = self.hostile()
            elif r.random() < 0.5:
                kwargs[r.choice(["x", "who", "holder", "selector"])] = self.hostile()
            else:
                args = [self.hostile()]
            payload[0] = p.pack([args, kwargs])
            return
        if mtype == p.REGISTER and payload and r.random() < 0.5:
            devices = p.unpack(payload[0])
            if not isinstance(devices, list) or not devices or not isinstance(devices[0], dict):
                return
            target = devices[0]
            if r.random() < 0.5:
                target[r.choice(["name", "kind", "labels", "interface", "on_release"])] = (
                    self.hostile()
                )
            else:
                target["interface"] = {"methods": self.hostile(), "streams": self.hostile()}
            payload[0] = p.pack(r.choice([devices, self.hostile()]))
            return
        if header:
            header[r.choice(list(header))] = self.hostile()


@dataclass
class Tally:
    sent: int = 0
    replies: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    internal: list[str] = field(default_factory=list)

    def saw(self, frames: list[Any]) -> None:
        self.replies += 1
        try:
            msg = p.decode(frames)
        except Exception:
            return
        if msg.mtype == p.ERROR:
            err = p.Error.parse(msg)
            self.codes[err.code] = self.codes.get(err.code, 0) + 1
            if err.code == "internal":
                self.internal.append(err.message)


def fuzz(bus: str, count: int, seed: int = 1, identities: int = 40) -> Tally:
    """Send ``count`` mutated messages to the broker at ``bus`` from ``identities`` DEALER
    sockets (round robin, never blocking: a full socket skips a turn), reading every reply."""
    ctx = zmq.Context.instance()
    socks = []
    for i in range(identities):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 1000)
        s.setsockopt(zmq.IDENTITY, f"fz{seed}-{i}".encode())
        s.connect(bus)
        socks.append(s)
    mut, tally = Mutator(seed), Tally()
    try:
        while tally.sent < count:
            for s in socks:
                try:
                    s.send_multipart(mut.next(), zmq.NOBLOCK, copy=True)
                    tally.sent += 1
                except zmq.Again:
                    pass
                while s.poll(0):
                    tally.saw(s.recv_multipart())
            if tally.sent % 4000 < identities:
                time.sleep(0.001)  # let replies come back now and then
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # the last replies
            for s in socks:
                while s.poll(0):
                    tally.saw(s.recv_multipart())
            time.sleep(0.01)
    finally:
        for s in socks:
            s.close(0)
    return tally


class Legit(threading.Thread):
    """A well-behaved client calling through the broker while the fuzz runs: a read-only
    RPC, a device listing, and now and then a lease on its own device; every failure is
    kept, every latency measured."""

    def __init__(self, bus: str, device: str = "pdu1.2") -> None:
        super().__init__(daemon=True)
        self.bus, self.device = bus, device
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        from labctl.lab import Lab

        with Lab(self.bus, timeout=10) as lab:
            dev = lab.device(self.device)
            n = 0
            while not self.stop.is_set():
                n += 1
                t0 = time.perf_counter()
                try:
                    if n % 50 == 0:
                        with lab.lease(f"name={self.device}", wait=10) as lease:
                            lease[self.device].on()
                    elif n % 10 == 0:
                        lab.devices("kind=power")
                    else:
                        dev.state()
                except Exception as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                self.latencies.append(time.perf_counter() - t0)
                time.sleep(0.002)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
