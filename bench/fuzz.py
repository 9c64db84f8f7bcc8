"""1M mutated messages against a live broker (issue 10): rate, legit p50/p99 during, RSS.

A broker with a registered mock power service; a legit client calls through it (read-only
RPCs, listings, a lease now and then) while ``tests.fuzz.mutator.fuzz`` sends the messages from
many identities. Reported: messages/s, the legit client's latency percentiles and failures,
error codes seen, ``internal`` count, broker RSS before / at the end / after the peers'
liveness ran out (targets: after within 20% of before, legit p99 < 50 ms, 0 failed, 0
internal).

    python3 bench/fuzz.py [--count 1000000] [--seed 1] [--identities 40] [--curve]

``--curve`` (issue 15 item 6): the broker runs CURVE and the legit client and the service
have authorized keys; the fuzz peers have none (half) or random keys nobody authorized
(half). Their messages cannot leave their own sockets, so each peer reconnects every
``--per-connection`` messages: what the broker pays for is handshakes (reported as
connections/s), and what it must not pay is state, memory or the legit client's latency.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import yaml
import zmq
from common import new_lab, percentiles  # type: ignore[import-not-found]

from labctl import keys
from tests.fuzz.mutator import Legit, Mutator, Tally, fuzz, rss_kib
from tests.harness import LabHarness, power_service, wait_until


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread of ``pid``, by thread name (libzmq's I/O thread is ZMQbg/IO/0)."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        out[name] = round(out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick, 2)
    return out


def with_keys(lab: LabHarness) -> bytes:
    """Keys for the broker, the legit client (admin) and pdu1 (its service); the legit
    client and the harness dial with them. The broker's public key."""
    state, cfg = lab.root / "state", lab.root / "cfg"
    keys.generate("broker", state)
    entries = []
    for name, directory, role in (("legit", cfg, "admin"), ("pdu1", lab.root, "service")):
        public, _ = keys.generate(name, directory)
        entry: dict[str, Any] = {"key": keys.load(public).public.decode(), "identity": name}
        entry.update(role=role, **({"devices": ["pdu1.*"]} if role == "service" else {}))
        entries.append(entry)
    (state / "authorized_keys.yaml").write_text(yaml.safe_dump(entries))
    env = {"LABCTL_CONFIG_DIR": str(cfg), "LABCTL_KEY": "legit",
           "LABCTL_BROKER_KEY": str(state / "broker.key")}  # fmt: skip
    os.environ.update(env)  # the legit client and the harness's probe
    lab.env.update(env)  # the service
    return keys.load(Path(state / "broker.key")).public


def curve_fuzz(
    bus: str,
    count: int,
    seed: int,
    identities: int,
    server: bytes,
    per_connection: int,
    peers: str = "mixed",
) -> tuple[Tally, int]:
    """``count`` mutated messages from ``identities`` peers without a valid key (even ones
    keyless, odd ones with a random key), each reconnecting after ``per_connection``
    messages. The tally, and how many connections (handshakes) were made."""
    # their own context: an attacker's handshakes must not queue in the legit client's I/O
    # thread (Context.instance(), in this process) and be charged to the broker
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    mut, tally, connections = Mutator(seed), Tally(), 0

    def dial(i: int) -> zmq.Socket[bytes]:
        nonlocal connections
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        rogue = peers == "unknown-key" or (peers == "mixed" and i % 2)
        keys.apply(sock, keys.ClientKeys.generated(server) if rogue else None)
        sock.connect(bus)
        connections += 1
        return sock

    socks = [dial(i) for i in range(identities)]
    sent = [0] * identities
    try:
        while tally.sent < count:
            for i, sock in enumerate(socks):
                if sent[i] >= per_connection:
                    sock.close(0)
                    socks[i], sent[i] = dial(i), 0
                try:
                    socks[i].send_multipart(mut.next(), zmq.NOBLOCK, copy=True)
                    tally.sent += 1
                    sent[i] += 1
                except zmq.Again:
                    sent[i] = per_connection  # full: it never got through; dial again
                while socks[i].poll(0):  # nothing should ever come back
                    tally.saw(socks[i].recv_multipart())
            if tally.sent % 4000 < identities:
                time.sleep(0.001)
    finally:
        for sock in socks:
            sock.close(0)
        ctx.term()
    return tally, connections


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--identities", type=int, default=40)
    ap.add_argument("--curve", action="store_true", help="fuzz peers without valid keys")
    ap.add_argument("--per-connection", type=int, default=20, help="--curve: messages a peer "
                    "queues before it reconnects")  # fmt: skip
    ap.add_argument("--peers", choices=["mixed", "keyless", "unknown-key"], default="mixed",
                    help="--curve: the fuzz peers' keys (mixed: half each)")  # fmt: skip
    opts = ap.parse_args()
    lab = new_lab(heartbeat=1.0)
    try:
        server = with_keys(lab) if opts.curve else b""
        broker = lab.start_broker(extra=("--curve",) if opts.curve else ())
        service = lab.start_service(power_service())
        legit = Legit(lab.bus)
        legit.start()
        wait_until(lambda: len(legit.latencies) > 50, 20, "the legit client to warm up")
        time.sleep(1.0)
        before = rss_kib(broker.pid)
        cpu_before = thread_cpu(broker.pid)
        warm = len(legit.latencies)
        t0 = time.perf_counter()
        connections = 0
        if opts.curve:
            tally, connections = curve_fuzz(
                lab.bus, opts.count, opts.seed, opts.identities, server, opts.per_connection,
                opts.peers,
            )  # fmt: skip
        else:
            tally = fuzz(lab.bus, opts.count, opts.seed, opts.identities)
        elapsed = time.perf_counter() - t0
        cpu = {k: round(v - cpu_before.get(k, 0.0), 2) for k, v in thread_cpu(broker.pid).items()}
        during = legit.latencies[warm:]
        end = rss_kib(broker.pid)
        # rogue sessions time out (liveness 3 s), rows are flushed, and the broker gives the
        # burst's heap back once it has been quiet for a few ticks (upkeep.HeapTrim)
        time.sleep(10.0)
        legit.stop.set()
        legit.join(20)
        after = rss_kib(broker.pid)
        lat = percentiles(during)
        quiet = percentiles(legit.latencies[10:warm])  # before the fuzz: the baseline
        report = {
            "mode": f"curve, fuzz peers: {opts.peers}" if opts.curve else "open",
            "messages": tally.sent,
            "seconds": round(elapsed, 1),
            "rate_per_s": round(tally.sent / elapsed),
            "replies": tally.replies,
            "internal": len(tally.internal),
            **(
                {"connections": connections, "connections_per_s": round(connections / elapsed)}
                if opts.curve
                else {}
            ),  # fmt: skip
            "codes": tally.codes,
            "legit_calls": len(during),
            "legit_failed": len(legit.failures),
            "legit_p50_ms": round(lat["p50_us"] / 1000, 2),
            "legit_p99_ms": round(lat["p99_us"] / 1000, 2),
            "legit_quiet_p50_ms": round(quiet["p50_us"] / 1000, 2),
            "broker_rss_kib": {"before": before, "end": end, "after": after},
            "broker_cpu_s_by_thread": cpu,
            "rss_after_vs_before": round(after / before, 3),
            "broker_alive": broker.alive(),
            "service_alive": service.alive(),
        }
        print(json.dumps(report, indent=2))
        if legit.failures:
            print("legit failures:", legit.failures[:5])
        if tally.internal:
            print("internal:", tally.internal[:5])
    finally:
        lab.close()


if __name__ == "__main__":
    main()
