"""Stream throughput through the broker beside a raw pyzmq floor, and a console's
1-byte round trip on a pty, in one run.

    python bench/stream.py [--mib 64] [--transport tcp|ipc]

Floor: a raw pyzmq DEALER -> ROUTER (forwarding process) -> DEALER, 64 KiB frames, no
flow control beyond the high-water marks. Floor and labctl rounds alternate (``--rounds``). labctl: a mock serial service generating the
bytes on its `console` stream -> broker -> sync SDK reader, with credit flow control.
Round trip: the SDK writes 1 byte to a pyserial console service whose pty this process
echoes back, and waits for it on the stream.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import tty

import zmq
from common import new_lab, percentiles

from labctl.lab import Lab
from tests.harness import free_port

FRAME = 64 * 1024


def floor_router(address: str) -> None:
    """Forward every frame from any peer to the receiver; answer the receiver's hello."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(address)
    receiver = None
    while True:
        ident, *rest = router.recv_multipart(copy=False)
        if rest[0].bytes == b"RECEIVER":
            receiver = ident
            router.send_multipart([ident, b"READY"])
        elif receiver is not None:
            router.send_multipart([receiver, *rest], copy=False)


class Floor:
    """A raw pyzmq DEALER -> ROUTER process -> DEALER path, set up once for every round."""

    def __init__(self, address: str) -> None:
        self.router = subprocess.Popen(
            [sys.executable, __file__, "--role", "router", "--address", address]
        )
        ctx = zmq.Context.instance()
        self.recv = ctx.socket(zmq.DEALER)
        self.recv.connect(address)
        self.sender = ctx.socket(zmq.DEALER)  # a sender thread keeps the process count equal
        self.sender.connect(address)
        # Wait for the router to know the receiver (it answers READY), however slow its start.
        self.recv.send(b"RECEIVER")
        if not self.recv.poll(30_000):
            raise SystemExit("the floor router did not start within 30 s")
        assert self.recv.recv() == b"READY"
        self.block = os.urandom(FRAME)

    def run(self, total: int) -> float:
        def send_all() -> None:
            for _ in range(total // FRAME):
                self.sender.send(self.block, copy=False)

        t0 = time.perf_counter()
        th = threading.Thread(target=send_all)
        th.start()
        got = 0
        while got < total:
            got += len(self.recv.recv(copy=False))
        elapsed = time.perf_counter() - t0
        th.join()
        return total / elapsed / 2**20

    def close(self) -> None:
        self.sender.close(linger=0)
        self.recv.close(linger=0)
        self.router.kill()
        self.router.wait()


def labctl_mib_s(lab: Lab, total: int) -> float:
    with lab.device("gen").stream("console", write=False, generate=total) as stream:
        t0 = time.perf_counter()
        got = 0
        while got < total:
            got += len(stream.read_some(30))
        return total / (time.perf_counter() - t0) / 2**20


def console_rtt(lab: Lab, master: int) -> dict[str, float]:
    stop = threading.Event()

    def echo() -> None:
        while not stop.is_set():
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            os.write(master, data)

    th = threading.Thread(target=echo, daemon=True)
    th.start()
    samples = []
    with lab.lease("name=con") as lease, lease["con"].stream("console") as con:
        for i in range(1100):
            t0 = time.perf_counter()
            con.write(b"x")
            assert con.read_some(5) == b"x"
            if i >= 100:
                samples.append(time.perf_counter() - t0)
    stop.set()
    return percentiles(samples)


def run(total: int, transport: str, rounds: int) -> dict[str, object]:
    """Floor and labctl rounds interleaved, so both see the same noise of a shared machine."""
    address = (
        f"tcp://127.0.0.1:{free_port()}"
        if transport == "tcp"
        else f"ipc:///tmp/lcb-sfloor-{os.getpid()}"
    )
    floor = Floor(address)
    h = new_lab(transport)
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    try:
        h.start_broker()
        h.start_service({"service": "gen", "kind": "serial", "driver": "mock"})
        h.start_service({"service": "con", "kind": "serial", "driver": "pyserial",
                         "config": {"url": os.ttyname(slave)}})  # fmt: skip
        lab = h.lab(timeout=30)
        floors, ours = [], []
        for _ in range(rounds):
            floors.append(floor.run(total))
            ours.append(labctl_mib_s(lab, total))
        ratios = sorted(o / f for o, f in zip(ours, floors, strict=True))
        return {
            "floor_mib_s": statistics.median(floors),
            "labctl_mib_s": statistics.median(ours),
            "ratio_median": statistics.median(ratios),
            "ratios": ratios,
            "console_rtt": console_rtt(lab, master),
        }
    finally:
        floor.close()
        h.close()
        os.close(master)
        os.close(slave)
        shutil.rmtree(h.root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--transport", choices=["tcp", "ipc"], default="tcp")
    ap.add_argument("--role", choices=["router"])
    ap.add_argument("--address")
    args = ap.parse_args()
    if args.role == "router":
        return floor_router(args.address)
    total = args.mib << 20
    r = run(total, args.transport, args.rounds)
    print(json.dumps({"mib": args.mib, "transport": args.transport, **r}, indent=2))
    rtt = r["console_rtt"]
    assert isinstance(rtt, dict)
    print(
        f"stream {args.mib} MiB x {args.rounds} rounds interleaved: floor {r['floor_mib_s']:.0f} "
        f"MiB/s, labctl {r['labctl_mib_s']:.0f} MiB/s; median ratio "
        f"{100 * float(r['ratio_median']):.0f}% of floor (target >= 60%); "
        f"console 1-byte round trip p50 {rtt['p50_us']:.0f} us, p99 {rtt['p99_us']:.0f} us"
    )


if __name__ == "__main__":
    main()
