"""CAN through the broker beside raw python-can on the same bus, rounds interleaved, one run.

    python bench/can.py [--frames 100000] [--rounds 3] [--pings 2000]

Burst (python-can ``virtual`` bus, in-process only): floor = bus A sends N frames from a
thread while bus B receives them (python-can alone). labctl = the SDK writes the N frames to
device can-a's write stream (broker -> service -> virtual bus), device can-b (same bus,
same service) streams them to an SDK reader (service -> broker -> client). Both check
every frame arrived, in order. A "stalled" labctl round adds a second reader on can-b that
reads nothing until the burst is over: the fast reader must not slow down, and the stalled
one must still get every frame it had credit and buffer for (here: all of them).

Latency (python-can ``udp_multicast`` in a private network namespace, needs root): a
responder process echoes frame 0x100 as 0x101. Floor = python-can code in the namespace
sending 0x100 and waiting for 0x101; labctl = the *same* function on
``can.Bus(interface="labctl", channel="can-u")``, whose service sits on that bus.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

# this file is bench/can.py: keep its folder off the path while python-can is imported
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
import can  # noqa: E402

sys.path.insert(0, _HERE)
from common import new_lab, percentiles  # noqa: E402

from tests.harness import Proc, wait_until  # noqa: E402

GROUP = "239.74.163.2"


def frames(n: int) -> list[can.Message]:
    return [can.Message(arbitration_id=i & 0x7FF, data=i.to_bytes(4, "little"), is_extended_id=False)
            for i in range(n)]  # fmt: skip


def check(got: list[int], n: int, what: str) -> None:
    if got != list(range(n)):
        missing = n - len(got)
        raise SystemExit(f"{what}: {missing} lost or out of order (first bad at {_first_bad(got)})")


def _first_bad(got: list[int]) -> int:
    return next((i for i, v in enumerate(got) if v != i), len(got))


# -- burst ------------------------------------------------------------------------------------
def floor_burst(n: int, channel: str) -> float:
    a = can.Bus(interface="virtual", channel=channel)
    b = can.Bus(interface="virtual", channel=channel)
    msgs = frames(n)
    try:
        start = time.perf_counter()
        sender = threading.Thread(target=lambda: [a.send(m) for m in msgs])
        sender.start()
        seq = []
        while len(seq) < n:
            msg = b.recv(5)
            if msg is None:
                break
            seq.append(int.from_bytes(msg.data, "little"))
        elapsed = time.perf_counter() - start
        sender.join()
    finally:
        a.shutdown()
        b.shutdown()
    check(seq, n, "floor")
    return n / elapsed


def labctl_burst(lab, n: int, stalled: bool) -> tuple[float, dict]:
    msgs = frames(n)
    dev_b = lab.device("can-b")
    extra: dict = {}
    with dev_b.frames() as reader, lab.lease("name=can-a") as lease, lease.can.writer() as out:
        slow = dev_b.frames() if stalled else None
        start = time.perf_counter()
        sender = threading.Thread(target=out.send_many, args=(msgs,))
        sender.start()
        seq = []
        while len(seq) < n:
            batch = reader.recv_batch(10)
            if not batch:
                break
            seq.extend(int.from_bytes(m.data, "little") for m in batch)
        elapsed = time.perf_counter() - start
        sender.join()
        check(seq, n, "labctl")
        if reader.lost:
            raise SystemExit(f"labctl: the reader lost {reader.lost} frames")
        if slow is not None:
            late = []
            while len(late) + slow.lost < n:
                batch = slow.recv_batch(5)
                if not batch:
                    break
                late.extend(int.from_bytes(m.data, "little") for m in batch)
            extra = {"stalled_reader_received": len(late), "stalled_reader_lost": slow.lost,
                     "stalled_reader_in_order": late == sorted(late)}  # fmt: skip
            slow.close()
    return n / elapsed, extra


# -- the bridge's thread hop ----------------------------------------------------------------
def hop_comparison(n: int) -> dict:
    """The bridge (one hop per batch) beside one thread hop per frame, on a virtual bus."""
    import trio

    from labctl.services.bridges.can import CanBridge

    msgs = frames(n)

    async def run(batched: bool, channel: str) -> tuple[float, int]:
        a = can.Bus(interface="virtual", channel=channel)
        b = can.Bus(interface="virtual", channel=channel)
        token, done, got = trio.lowlevel.current_trio_token(), trio.Event(), [0]

        def take(batch: list) -> None:
            got[0] += len(batch)
            if got[0] >= n:
                done.set()

        def per_frame_reader() -> None:
            while got[0] < n:
                msg = b.recv(0.1)
                if msg is not None:
                    token.run_sync_soon(take, [msg])

        bridge = CanBridge(b)
        start = time.perf_counter()
        threading.Thread(target=lambda: [a.send(m) for m in msgs]).start()
        async with trio.open_nursery() as nursery:
            if batched:
                nursery.start_soon(bridge.run, take)
            else:
                nursery.start_soon(trio.to_thread.run_sync, per_frame_reader)
            await done.wait()
            nursery.cancel_scope.cancel()
        elapsed = time.perf_counter() - start
        a.shutdown()
        b.shutdown()
        return n / elapsed, bridge.hops if batched else n

    per_fps, per_hops = trio.run(run, False, "hop1")
    fps, hops = trio.run(run, True, "hop2")
    return {"per_frame_hop_fps": per_fps, "per_frame_hops": per_hops,
            "bridge_fps": fps, "bridge_hops": hops}  # fmt: skip


# -- latency ------------------------------------------------------------------------------------
def pingpong(bus: can.BusABC, n: int) -> list[float]:
    """Send 0x100 and wait for the echo 0x101, ``n`` times (after 50 warm-up rounds)."""
    out = []
    for i in range(n + 50):
        payload = i.to_bytes(4, "little")
        start = time.perf_counter()
        bus.send(can.Message(arbitration_id=0x100, data=payload, is_extended_id=False))
        while True:
            msg = bus.recv(5)
            if msg is None:
                raise SystemExit("no echo within 5 s")
            if msg.arbitration_id == 0x101 and bytes(msg.data) == payload:
                break
        if i >= 50:
            out.append(time.perf_counter() - start)
    return out


def echo_main() -> None:
    bus = can.Bus(interface="udp_multicast", channel=GROUP)
    print("ready", flush=True)
    while True:
        msg = bus.recv(1)
        if msg is not None and msg.arbitration_id == 0x100:
            bus.send(can.Message(arbitration_id=0x101, data=msg.data, is_extended_id=False))


def floor_ping_main(n: int) -> None:
    with can.Bus(interface="udp_multicast", channel=GROUP) as bus:
        print(json.dumps(pingpong(bus, n)), flush=True)


def netns_up(name: str) -> bool:
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        return False
    for cmd in (["link", "set", "lo", "up"], ["link", "set", "lo", "multicast", "on"],
                ["route", "add", "239.0.0.0/8", "dev", "lo"]):  # fmt: skip
        subprocess.run(["ip", "netns", "exec", name, "ip", *cmd], check=True)
    return True


def latency(rounds: int, pings: int) -> dict:
    ns = f"lcb-can-{os.getpid()}"
    if not netns_up(ns):
        return {"skipped": "no network namespace (needs root and ip netns)"}
    inside = ["ip", "netns", "exec", ns, sys.executable]
    h = new_lab()
    here = os.path.abspath(__file__)
    env = {**h.env, "PYTHONPATH": os.path.dirname(os.path.dirname(here))}
    try:
        h.start_broker()
        cfg = {"service": "can-u", "kind": "can", "driver": "python-can",
               "config": {"interface": "udp_multicast", "channel": GROUP}}  # fmt: skip
        path = h.write_config(cfg)
        h.procs.append(
            Proc(
                [*inside, "-m", "labctl.cli", "service", "run", str(path)], h.root / "svc.log", env
            ).start()
        )
        echo = Proc([*inside, here, "--role", "echo"], h.root / "echo.log", env).start()
        h.procs.append(echo)
        h.wait_online(["can-u"])
        wait_until(lambda: "ready" in echo.output(), 15, "the echo responder")
        floor_s: list[float] = []
        labctl_s: list[float] = []
        rpc_s: list[float] = []
        for _ in range(rounds):
            out = subprocess.run([*inside, here, "--role", "floor-ping", "--pings", str(pings)],
                                 capture_output=True, text=True, env=env, check=True)  # fmt: skip
            floor_s += json.loads(out.stdout)
            with can.Bus(interface="labctl", channel="can-u", broker=h.bus) as bus:
                labctl_s += pingpong(bus, pings)
                for _ in range(pings // 4):  # context: one RPC through the same broker
                    start = time.perf_counter()
                    bus.device.state()
                    rpc_s.append(time.perf_counter() - start)
        f, lc = percentiles(floor_s), percentiles(labctl_s)
        return {"floor": f, "labctl": lc, "p50_ratio": lc["p50_us"] / f["p50_us"],
                "labctl_rpc_state_p50_us": percentiles(rpc_s)["p50_us"]}  # fmt: skip
    finally:
        h.close()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--frames", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--pings", type=int, default=2000)
    p.add_argument("--role", default="bench")
    a = p.parse_args()
    if a.role == "echo":
        return echo_main()
    if a.role == "floor-ping":
        return floor_ping_main(a.pings)

    h = new_lab()
    try:
        h.start_broker()
        h.start_service({"service": "cans", "kind": "can", "driver": "mock", "config": {"channel": "bench"},
                         "devices": [{"name": "can-a"}, {"name": "can-b"}]})  # fmt: skip
        lab = h.lab(timeout=30)
        floor, ours, stalled, extras = [], [], [], {}
        for r in range(a.rounds):  # interleaved: floor, labctl, labctl with a stalled reader
            floor.append(floor_burst(a.frames, f"floor{r}"))
            ours.append(labctl_burst(lab, a.frames, stalled=False)[0])
            fps, extras = labctl_burst(lab, a.frames, stalled=True)
            stalled.append(fps)
        bridge = lab.device("can-b").state()["bridge"]
    finally:
        h.close()
    result = {
        "frames": a.frames,
        "floor_fps": statistics.median(floor),
        "labctl_fps": statistics.median(ours),
        "ratio": statistics.median(ours) / statistics.median(floor),
        "labctl_with_stalled_reader_fps": statistics.median(stalled),
        **extras,
        "rounds": {"floor": floor, "labctl": ours, "stalled": stalled},
        "virtual_bridge": {**bridge, "frames_per_hop": bridge["frames"] / max(1, bridge["hops"])},
        "thread_hop": hop_comparison(a.frames),
        "latency": latency(a.rounds, a.pings),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
