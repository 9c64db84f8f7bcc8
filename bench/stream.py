"""Stream throughput through the broker beside a raw pyzmq floor, and a console's
1-byte round trip on a pty, in one run.

    python bench/stream.py [--mib 64] [--transport tcp|ipc]

Floor: a raw pyzmq DEALER -> ROUTER (forwarding process) -> DEALER, 64 KiB frames, no
flow control beyond the high-water marks. labctl: a mock serial service generating the
bytes on its `console` stream -> broker -> sync SDK reader, with credit flow control.
Round trip: the SDK writes 1 byte to a pyserial console service whose pty this process
echoes back, and waits for it on the stream.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import tty

import zmq
from common import new_lab, percentiles

from tests.harness import free_port

FRAME = 64 * 1024


def floor_router(address: str) -> None:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(address)
    receiver = None
    while True:
        ident, *rest = router.recv_multipart(copy=False)
        if rest[0].bytes == b"RECEIVER":
            receiver = ident
            continue
        router.send_multipart([receiver, *rest], copy=False)


def run_floor(total: int, address: str) -> float:
    router = subprocess.Popen([sys.executable, __file__, "--role", "router", "--address", address])
    try:
        ctx = zmq.Context.instance()
        recv = ctx.socket(zmq.DEALER)
        recv.connect(address)
        recv.send(b"RECEIVER")
        sender = ctx.socket(zmq.DEALER)  # in-process sender thread keeps the process count equal
        sender.connect(address)
        time.sleep(0.2)  # let the router learn the receiver before data flows
        block = os.urandom(FRAME)

        def send_all() -> None:
            for _ in range(total // FRAME):
                sender.send(block, copy=False)

        t0 = time.perf_counter()
        th = threading.Thread(target=send_all)
        th.start()
        got = 0
        while got < total:
            got += len(recv.recv(copy=False))
        elapsed = time.perf_counter() - t0
        th.join()
        sender.close()
        recv.close()
        return total / elapsed / 2**20
    finally:
        router.kill()
        router.wait()


def run_labctl(total: int, transport: str) -> tuple[float, dict[str, float]]:
    h = new_lab(transport)
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    try:
        h.start_broker()
        h.start_service({"service": "gen", "kind": "serial", "driver": "mock"})
        h.start_service(
            {
                "service": "con",
                "kind": "serial",
                "driver": "pyserial",
                "config": {"url": os.ttyname(slave)},
            }
        )
        lab = h.lab(timeout=30)
        with lab.device("gen").stream("console", write=False, generate=total) as stream:
            t0 = time.perf_counter()
            got = 0
            while got < total:
                got += len(stream.read_some(30))
            mib_s = total / (time.perf_counter() - t0) / 2**20

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
        return mib_s, percentiles(samples)
    finally:
        h.close()
        os.close(master)
        os.close(slave)
        shutil.rmtree(h.root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--transport", choices=["tcp", "ipc"], default="tcp")
    ap.add_argument("--role", choices=["router"])
    ap.add_argument("--address")
    args = ap.parse_args()
    if args.role == "router":
        return floor_router(args.address)
    total = args.mib << 20
    address = (
        f"tcp://127.0.0.1:{free_port()}"
        if args.transport == "tcp"
        else f"ipc:///tmp/lcb-sfloor-{os.getpid()}"
    )
    floor = run_floor(total, address)
    ours, rtt = run_labctl(total, args.transport)
    result = {"mib": args.mib, "transport": args.transport, "floor_mib_s": floor, "labctl_mib_s": ours,
              "ratio": ours / floor, "console_rtt": rtt}  # fmt: skip
    print(json.dumps(result, indent=2))
    print(
        f"stream {args.mib} MiB: floor {floor:.0f} MiB/s, labctl {ours:.0f} MiB/s "
        f"({100 * ours / floor:.0f}% of floor, target >= 60%; Jumpstarter ~37 MiB/s, target >= 185); "
        f"console 1-byte round trip p50 {rtt['p50_us']:.0f} us, p99 {rtt['p99_us']:.0f} us"
    )


if __name__ == "__main__":
    main()
