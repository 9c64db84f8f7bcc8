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


def run_floor(calls: int, address: str) -> dict[str, float]:
    procs = [
        subprocess.Popen([sys.executable, __file__, "--role", role, "--address", address])
        for role in ("router", "service")
    ]
    try:
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(address)
        samples = []
        for i in range(calls + 500):
            t0 = time.perf_counter()
            sock.send(msgpack.packb({"id": i, "method": "state", "args": [[], {}]}))
            if not sock.poll(10000):
                raise SystemExit("floor did not answer")
            msgpack.unpackb(sock.recv())
            if i >= 500:
                samples.append(time.perf_counter() - t0)
        sock.close()
        return percentiles(samples)
    finally:
        for p in procs:
            p.kill()
            p.wait()


def run_labctl(calls: int, transport: str) -> tuple[dict[str, float], float, float]:
    h = new_lab(transport)
    try:
        h.start_broker()
        h.start_service(power_service("bench", outlets=1))
        lab = h.lab(timeout=10)
        dev = lab.device("bench.1")
        samples = []
        for i in range(calls + 500):
            t0 = time.perf_counter()
            dev.state()
            if i >= 500:
                samples.append(time.perf_counter() - t0)
        env = dict(os.environ, LABCTL_BROKER=h.bus)
        labctl = shutil.which("labctl") or "labctl"
        power = min(_wall([labctl, "power", "on", "bench.1"], env) for _ in range(5))
        help_ = min(_wall([labctl, "--help"], env) for _ in range(5))
        return percentiles(samples), power, help_
    finally:
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
    address = (
        f"tcp://127.0.0.1:{free_port()}"
        if args.transport == "tcp"
        else f"ipc:///tmp/lcb-floor-{os.getpid()}"
    )
    floor = run_floor(args.calls, address)
    ours, power_on, help_ = run_labctl(args.calls, args.transport)
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
