"""RPC latency through the broker beside a raw pyzmq floor, in one run.

    python bench/rpc.py [--calls 5000] [--transport tcp|ipc] [--parts] [--load N]

Floor: a blocking pyzmq DEALER client -> a blocking ROUTER forwarder process -> a
blocking DEALER "service" process that answers msgpack, the least any broker design can
cost on this machine. labctl: the sync SDK -> broker -> mock power service, `state()`.
Rounds of floor and labctl calls alternate; the ratio is taken per round and its median
reported beside the pooled p50s (and the spread of the round ratios). Then, in a batch of
its own, cProfile counts the Python function calls per RPC in the client, the broker and
the service (the broker and service run under bench/profiled.py, switched on and off by
signals; what they do on their own meanwhile, timers, is measured in an idle window and
subtracted). Also the wall time of `labctl power on DEVICE` (one-shot: lease, call, release)
and of `labctl --help`.

``--parts`` also times, in the same interleaved rounds, the labctl broker with a blocking
LAB1 service (``broker-only``) and a minimal blocking LAB1 broker with the labctl service
(``service-only``), both called through the SDK: how much of the excess over the floor
each labctl process adds.

``--load N`` runs N busy-loop processes meanwhile (``--load 2`` on 2 cores: the loaded
machine of issue 8), so a loaded run can be repeated. Each round also reads the CPU time
(user + system, every thread) the client and the other processes of each side spent: CPU
per RPC moves far less with the machine's noise than latency does.

Where the time goes (this VM, issue 8.5): the floor's processes spend it in the kernel and
libzmq; labctl's add Python. A trip through trio's scheduler per received message cost
10-25 µs of CPU, so the service and the broker sleep in zmq_poll while trio is idle
(``labctl.trio_idle``; ``LABCTL_TRIO_IDLE_POLL=0`` turns it off for an A/B run).

Reading the numbers on a shared VM: the floor is mostly thread wake-ups (12 per RPC), and
a wake-up costs more when the woken vCPU has gone idle, so the floor is *slower* on an
idle machine (~300 us here) than on a busy one (~140 us), while labctl's own Python and
syscalls per message stay; the ratio is worst when the floor is fast.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import zmq
from common import new_lab, percentiles

from tests.harness import Proc, free_port, power_service, wait_until

PROFILED = [sys.executable, str(Path(__file__).resolve().parent / "profiled.py")]


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


def lab1_broker(front: str) -> None:
    """A minimal blocking LAB1 broker (``--parts``): one service, request ids rewritten,
    canned answers to the SDK's broker calls; what labctl's broker is compared with."""
    from labctl import multipart
    from labctl import protocol as P

    router = zmq.Context().socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.bind(front)
    service, pending, rid = None, {}, 0
    device = {"name": "parts.1", "kind": "power", "driver": "mock", "labels": {},
              "interface": {"methods": {"state": {"mutating": False}}}}  # fmt: skip
    while True:
        frames = multipart.recv(router)
        ident, mtype = frames[0], frames[2]
        if mtype == P.REGISTER:
            service = ident
            multipart.send(router, [ident, *P.Welcome(heartbeat=1.0, liveness=3).to_frames()])
        elif mtype == P.REQUEST:
            header = P.unpack(frames[3])
            rid += 1
            pending[rid], header["id"] = (ident, header["id"]), rid
            multipart.send(router, [service, P.TAG, mtype, P.pack(header), *frames[4:]])
        elif mtype in (P.REPLY, P.ERROR):
            header = P.unpack(frames[3])
            client, header["id"] = pending.pop(header["id"])
            multipart.send(router, [client, P.TAG, mtype, P.pack(header), *frames[4:]])
        elif mtype == P.HEARTBEAT and ident == service:
            multipart.send(router, [ident, *P.Heartbeat().to_frames()])
        elif mtype == P.CALL:  # devices() while waiting for it online, device() for info
            call = P.Call.parse(P.decode(frames[1:]))
            info = dict(device, online=service is not None)
            found = [info] if call.method == "devices" else info
            multipart.send(router, [ident, *P.Reply(call.id, found).to_frames()])


def lab1_service(front: str) -> None:
    """A blocking LAB1 service answering ``state()`` of ``blocking.1`` (``--parts``)."""
    from labctl import multipart
    from labctl import protocol as P

    dealer = zmq.Context().socket(zmq.DEALER)
    dealer.connect(front)
    device = {"name": "blocking.1", "kind": "power", "driver": "mock", "labels": {},
              "interface": {"methods": {"state": {"mutating": False}}}, "on_release": "none"}  # fmt: skip
    register = P.Register(service="blocking", devices=[device], host="bench", pid=os.getpid())
    multipart.send(dealer, register.to_frames())
    heartbeat, off = P.Heartbeat("service").to_frames(), P.pack("off")
    while True:
        frames = multipart.recv(dealer)
        if frames[1] == P.REQUEST:
            reply_id = P.pack({"id": P.unpack(frames[2])["id"]})
            multipart.send(dealer, [P.TAG, P.REPLY, reply_id, off])
        elif frames[1] == P.HEARTBEAT:
            multipart.send(dealer, heartbeat)


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


def interleaved(
    calls: int, fns: dict[str, Any], batch: int = 250, pids: dict[str, list[int]] | None = None
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, float]]:
    """Time ``calls`` calls of each function, alternating batches, so all see the same
    noise. Returns the samples; per round, each one's p50 over the first one's; and the
    CPU seconds per call each one cost this process and the processes in ``pids[name]``
    (user + system, all threads: libzmq's I/O threads too)."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    ratios: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, float] = dict.fromkeys(fns, 0.0)
    pids = pids or {}
    for fn in fns.values():  # warm up
        for _ in range(300):
            fn()
    for _ in range(max(1, calls // batch)):
        medians = {}
        for name, fn in fns.items():
            xs = []
            c0 = _cpu_seconds(pids.get(name, []))
            for _ in range(batch):
                t0 = time.perf_counter()
                fn()
                xs.append(time.perf_counter() - t0)
            cpu[name] += _cpu_seconds(pids.get(name, [])) - c0
            samples[name].extend(xs)
            medians[name] = statistics.median(xs)
        first = next(iter(medians.values()))
        for name, median in medians.items():
            ratios[name].append(median / first)
    return samples, ratios, {name: cpu[name] / len(samples[name]) for name in fns}


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pids: list[int]) -> float:
    """CPU seconds used so far by this process and ``pids`` (clock ticks: 10 ms each, so
    only a batch's total is meaningful)."""
    own = os.times()
    total = own.user + own.system
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    return total


def start_profiled(h: Any, name: str, argv: list[str]) -> tuple[Proc, Path]:
    """A labctl process (``-m module args``) under bench/profiled.py; its stats file."""
    stats = h.root / f"{name}.prof"
    proc = Proc([*PROFILED, str(stats), *argv], h.root / f"{name}.log", h.env).start()
    h.procs.append(proc)
    return proc, stats


def calls_per_rpc(fn: Any, n: int, procs: dict[str, tuple[Proc, Path]]) -> dict[str, float]:
    """Function calls per ``fn()`` in this process and in each profiled process.

    A profiled process also runs timers (heartbeats, housekeeping, key reloads) while the
    batch runs: an idle window first measures that rate, and the batch's share of it is
    subtracted, so the number is the RPC's own (raw counts vary with the timers' phase).
    """
    idle, idle_s = _profile_window(procs, lambda: time.sleep(1.0))
    prof = cProfile.Profile()

    def batch() -> None:
        time.sleep(0.3)  # the handlers run when each process next wakes (a heartbeat at most)
        fn()  # wakes them all
        prof.enable()
        for _ in range(n):
            fn()
        prof.disable()

    busy, busy_s = _profile_window(procs, batch)
    out = {"client": pstats.Stats(prof).total_calls / n}  # type: ignore[attr-defined]
    if os.environ.get("LABCTL_BENCH_PROFILES"):
        prof.dump_stats(Path(os.environ["LABCTL_BENCH_PROFILES"]) / "client.prof")
    for name in procs:
        out[name] = (busy[name] - idle[name] * busy_s / idle_s) / (n + 1)
    return {k: round(v, 1) for k, v in out.items()}


def _profile_window(
    procs: dict[str, tuple[Proc, Path]], during: Any
) -> tuple[dict[str, int], float]:
    """Profile the processes while ``during()`` runs: their call counts and the seconds."""
    t0 = time.perf_counter()
    for proc, _ in procs.values():
        os.kill(proc.pid, signal.SIGUSR1)
    during()
    for proc, stats in procs.values():
        stats.unlink(missing_ok=True)
        os.kill(proc.pid, signal.SIGUSR2)
    seconds = time.perf_counter() - t0
    counts = {}
    for name, (_, stats) in procs.items():
        wait_until(stats.exists, 10, f"{name} profile")
        time.sleep(0.1)  # written in one go; let it finish
        counts[name] = pstats.Stats(str(stats)).total_calls  # type: ignore[attr-defined]
        if os.environ.get("LABCTL_BENCH_PROFILES"):  # keep them: pstats / snakeviz
            shutil.copy(stats, Path(os.environ["LABCTL_BENCH_PROFILES"]) / stats.name)
    return counts, seconds


def run(calls: int, transport: str, parts: bool = False) -> dict[str, Any]:
    address = (
        f"tcp://127.0.0.1:{free_port()}"
        if transport == "tcp"
        else f"ipc:///tmp/lcb-floor-{os.getpid()}"
    )
    floor = Floor(address)
    h = new_lab(transport)
    try:
        broker = start_profiled(h, "broker", [
            "-m", "labctl.cli", "broker", "run", "--bus", h.bus, "--events", h.events,
            "--state", str(h.root / "state"), "--heartbeat", str(h.heartbeat),
            "--lease-grace", h.grace])  # fmt: skip
        lab = h.lab(timeout=10)
        wait_until(lambda: _answers(lab), 15, "the broker to answer")
        config = h.write_config(power_service("bench", outlets=1))
        service = start_profiled(h, "service", ["-m", "labctl.services", str(config)])
        h.wait_online(["bench.1"])
        dev = lab.device("bench.1")
        fns = {"floor": floor.call, "labctl": dev.state}
        pids = {"floor": [p.pid for p in floor.procs], "labctl": [broker[0].pid, service[0].pid]}
        if parts:
            fns.update(_parts(h, transport))
        samples, ratios, cpu = interleaved(calls, fns, pids=pids)
        # LABCTL_BENCH_PROFILES=DIR keeps the three profiles
        per_rpc = calls_per_rpc(dev.state, 1000, {"broker": broker, "service": service})
        env = dict(os.environ, LABCTL_BROKER=h.bus)
        labctl = shutil.which("labctl") or "labctl"
        power = min(_wall([labctl, "power", "on", "bench.1"], env) for _ in range(5))
        help_ = min(_wall([labctl, "--help"], env) for _ in range(5))
        return {
            "floor": percentiles(samples["floor"]),
            "labctl": percentiles(samples["labctl"]),
            "round_ratios": ratios["labctl"],
            "parts": {
                name: {**percentiles(samples[name]), "ratio": statistics.median(ratios[name])}
                for name in fns
                if name not in ("floor", "labctl")
            },
            "calls_per_rpc": per_rpc,
            "cpu_us_per_rpc": {name: cpu[name] * 1e6 for name in pids},
            "power": power,
            "help": help_,
        }
    finally:
        floor.close()
        h.close()
        shutil.rmtree(h.root, ignore_errors=True)


def _parts(h: Any, transport: str) -> dict[str, Any]:
    """The ``--parts`` variants: the labctl broker with a blocking LAB1 service, and a
    minimal blocking LAB1 broker with the labctl service, each called through the SDK."""
    from labctl.lab import Lab

    me = [sys.executable, __file__, "--role"]
    h.procs.append(Proc([*me, "service", "--lab1", "--address", h.bus], h.root / "b.log").start())
    mini = (
        f"tcp://127.0.0.1:{free_port()}"
        if transport == "tcp"
        else f"ipc://{h.root}/mini-{os.getpid()}"
    )
    h.procs.append(Proc([*me, "router", "--lab1", "--address", mini], h.root / "m.log").start())
    config = h.write_config({**power_service("parts", outlets=1), "broker": mini})
    h.procs.append(
        Proc(
            [sys.executable, "-m", "labctl.services", str(config)], h.root / "p.log", h.env
        ).start()
    )
    h.wait_online(["blocking.1"])
    mini_lab = Lab(mini, timeout=10)
    wait_until(lambda: mini_lab.devices()[0]["online"], 15, "the service at the minimal broker")
    return {
        "broker-only": h.lab(timeout=10).device("blocking.1").state,
        "service-only": mini_lab.device("parts.1").state,
    }


def _answers(lab: Any) -> bool:
    try:
        lab.client.call("hello", timeout=0.5)
        return True
    except Exception:
        return False


def _wall(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--transport", choices=["tcp", "ipc"], default="tcp")
    ap.add_argument("--parts", action="store_true", help="also time broker-only/service-only")
    ap.add_argument("--role", choices=["router", "service"])
    ap.add_argument("--lab1", action="store_true", help="the role speaks LAB1 (--parts)")
    ap.add_argument("--address")
    ap.add_argument(
        "--load", type=int, default=0, metavar="N",
        help="run N busy-loop processes meanwhile: a loaded machine, reproducibly",
    )  # fmt: skip
    args = ap.parse_args()
    if args.role == "router":
        return (lab1_broker if args.lab1 else floor_router)(args.address)
    if args.role == "service":
        return (lab1_service if args.lab1 else floor_service)(args.address)
    load = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    try:
        r = run(args.calls, args.transport, args.parts)
    finally:
        for p in load:
            p.kill()
            p.wait()
    floor, ours, power_on, help_ = r["floor"], r["labctl"], r["power"], r["help"]
    result = {
        "calls": args.calls,
        "transport": args.transport,
        "load": args.load,
        "floor": floor,
        "labctl": ours,
        "ratio_p50": ours["p50_us"] / floor["p50_us"],
        "ratio_p50_round_median": statistics.median(r["round_ratios"]),
        "ratio_p50_round_range": [min(r["round_ratios"]), max(r["round_ratios"])],
        "parts": r["parts"],
        "ratio_p99": ours["p99_us"] / floor["p99_us"],
        "calls_per_rpc": r["calls_per_rpc"],
        "cpu_us_per_rpc": r["cpu_us_per_rpc"],
        "labctl_power_on_wall_ms": power_on * 1000,
        "labctl_help_wall_ms": help_ * 1000,
    }
    print(json.dumps(result, indent=2))
    print(
        f"RPC p50 floor {floor['p50_us']:.0f} us, labctl {ours['p50_us']:.0f} us "
        f"(ratio {result['ratio_p50']:.2f}, per-round median "
        f"{result['ratio_p50_round_median']:.2f}, rounds {min(r['round_ratios']):.2f}-"
        f"{max(r['round_ratios']):.2f}, target <= 1.5); calls per RPC "
        f"{r['calls_per_rpc']}; CPU per RPC (all processes, us) "
        f"{ {k: round(v) for k, v in r['cpu_us_per_rpc'].items()} }; p99 {floor['p99_us']:.0f} / {ours['p99_us']:.0f} us; "
        f"`labctl power on` {power_on * 1000:.0f} ms (target < 250); `labctl --help` {help_ * 1000:.0f} ms (target < 150)"
    )
    for name, part in r["parts"].items():
        print(f"  {name}: p50 {part['p50_us']:.0f} us, ratio {part['ratio']:.2f} of the floor")


if __name__ == "__main__":
    main()
