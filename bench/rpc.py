"""RPC latency through the broker beside a raw pyzmq floor, in one run.

    python bench/rpc.py [--calls 5000] [--transport tcp|ipc]

Floor: a blocking pyzmq DEALER client -> a blocking ROUTER forwarder process -> a
blocking DEALER "service" process that answers msgpack, the least any broker design can
cost on this machine. labctl: the sync SDK -> broker -> mock power service, `state()`.
Also the wall time of `labctl power on DEVICE` (one-shot: lease, call, release) and of
`labctl --help`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

import msgpack
import zmq
from common import new_lab, percentiles

from tests.harness import free_port, power_service


def floor_router(front: str) -> None:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(front)
    service = None
    early = []  # requests that came before the service said READY
    while True:
        frames = router.recv_multipart()
        ident = frames[0]
        if frames[1] == b"READY":
            service = ident
            for client, body in early:
                router.send_multipart([service, client, body])
            continue
        if ident == service:  # reply: [service, client, body]
            router.send_multipart([frames[1], frames[2]])
        elif service is None:
            early.append((ident, frames[1]))
        else:
            router.send_multipart([service, ident, frames[1]])


def floor_service(front: str) -> None:
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(front)
    dealer.send(b"READY")
    while True:
        client, body = dealer.recv_multipart()
        req = msgpack.unpackb(body)
        dealer.send_multipart([client, msgpack.packb({"id": req["id"], "result": "off"})])


class Floor:
    """The raw pyzmq floor: router and service processes, and a blocking client."""

    def __init__(self, address: str) -> None:
        self.procs = [
            subprocess.Popen([sys.executable, __file__, "--role", role, "--address", address])
            for role in ("router", "service")
        ]
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)
        self.n = 0

    def call(self) -> None:
        self.n += 1
        self.sock.send(msgpack.packb({"id": self.n, "method": "state", "args": [[], {}]}))
        if not self.sock.poll(10000):
            raise SystemExit("floor did not answer")
        msgpack.unpackb(self.sock.recv())

    def close(self) -> None:
        self.sock.close()
        for p in self.procs:
            p.kill()
            p.wait()


def interleaved(calls: int, a: Any, b: Any, batch: int = 250) -> tuple[list[float], list[float]]:
    """Time ``calls`` calls of each, alternating batches, so both see the same noise."""
    out: tuple[list[float], list[float]] = ([], [])
    for fn in (a, b):  # warm up
        for _ in range(300):
            fn()
    for _ in range(max(1, calls // batch)):
        for fn, samples in ((a, out[0]), (b, out[1])):
            for _ in range(batch):
                t0 = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - t0)
    return out


def run(calls: int, transport: str) -> dict[str, Any]:
    address = (
        f"tcp://127.0.0.1:{free_port()}"
        if transport == "tcp"
        else f"ipc:///tmp/lcb-floor-{os.getpid()}"
    )
    floor = Floor(address)
    h = new_lab(transport)
    try:
        h.start_broker()
        h.start_service(power_service("bench", outlets=1))
        lab = h.lab(timeout=10)
        dev = lab.device("bench.1")
        floor_s, ours_s = interleaved(calls, floor.call, dev.state)
        env = dict(os.environ, LABCTL_BROKER=h.bus)
        labctl = shutil.which("labctl") or "labctl"
        power = min(_wall([labctl, "power", "on", "bench.1"], env) for _ in range(5))
        help_ = min(_wall([labctl, "--help"], env) for _ in range(5))
        return {
            "floor": percentiles(floor_s),
            "labctl": percentiles(ours_s),
            "power": power,
            "help": help_,
        }
    finally:
        floor.close()
        h.close()
        shutil.rmtree(h.root, ignore_errors=True)


def _wall(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--transport", choices=["tcp", "ipc"], default="tcp")
    ap.add_argument("--role", choices=["router", "service"])
    ap.add_argument("--address")
    args = ap.parse_args()
    if args.role == "router":
        return floor_router(args.address)
    if args.role == "service":
        return floor_service(args.address)
    r = run(args.calls, args.transport)
    floor, ours, power_on, help_ = r["floor"], r["labctl"], r["power"], r["help"]
    result = {
        "calls": args.calls,
        "transport": args.transport,
        "floor": floor,
        "labctl": ours,
        "ratio_p50": ours["p50_us"] / floor["p50_us"],
        "ratio_p99": ours["p99_us"] / floor["p99_us"],
        "labctl_power_on_wall_ms": power_on * 1000,
        "labctl_help_wall_ms": help_ * 1000,
    }
    print(json.dumps(result, indent=2))
    print(
        f"RPC p50 floor {floor['p50_us']:.0f} us, labctl {ours['p50_us']:.0f} us "
        f"(ratio {result['ratio_p50']:.2f}, target <= 1.5); p99 {floor['p99_us']:.0f} / {ours['p99_us']:.0f} us; "
        f"`labctl power on` {power_on * 1000:.0f} ms (target < 250); `labctl --help` {help_ * 1000:.0f} ms (target < 150)"
    )


if __name__ == "__main__":
    main()
