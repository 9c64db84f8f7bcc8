"""1M mutated messages against a live broker (issue 10): rate, legit p50/p99 during, RSS.

A broker with a registered mock power service; a legit client calls through it (read-only
RPCs, listings, a lease now and then) while ``tests.fuzz.mutator.fuzz`` sends the messages from
many identities. Reported: messages/s, the legit client's latency percentiles and failures,
error codes seen, ``internal`` count, broker RSS before / at the end / after the peers'
liveness ran out (targets: after within 20% of before, legit p99 < 50 ms, 0 failed, 0
internal).

    python3 bench/fuzz.py [--count 1000000] [--seed 1] [--identities 40]
"""

from __future__ import annotations

import argparse
import json
import time

from common import new_lab, percentiles  # type: ignore[import-not-found]

from tests.fuzz.mutator import Legit, fuzz, rss_kib
from tests.harness import power_service, wait_until


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--identities", type=int, default=40)
    opts = ap.parse_args()
    lab = new_lab(heartbeat=1.0)
    try:
        broker = lab.start_broker()
        service = lab.start_service(power_service())
        legit = Legit(lab.bus)
        legit.start()
        wait_until(lambda: len(legit.latencies) > 50, 20, "the legit client to warm up")
        time.sleep(1.0)
        before = rss_kib(broker.pid)
        warm = len(legit.latencies)
        t0 = time.perf_counter()
        tally = fuzz(lab.bus, opts.count, opts.seed, opts.identities)
        elapsed = time.perf_counter() - t0
        during = legit.latencies[warm:]
        end = rss_kib(broker.pid)
        time.sleep(5.0)  # rogue sessions time out (liveness 3 s), rows are flushed
        legit.stop.set()
        legit.join(20)
        after = rss_kib(broker.pid)
        lat = percentiles(during)
        report = {
            "messages": tally.sent,
            "seconds": round(elapsed, 1),
            "rate_per_s": round(tally.sent / elapsed),
            "replies": tally.replies,
            "internal": len(tally.internal),
            "codes": tally.codes,
            "legit_calls": len(during),
            "legit_failed": len(legit.failures),
            "legit_p50_ms": round(lat["p50_us"] / 1000, 2),
            "legit_p99_ms": round(lat["p99_us"] / 1000, 2),
            "broker_rss_kib": {"before": before, "end": end, "after": after},
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
