"""Lease acquire + release latency: one device, and a three-device group, in one run.

    python bench/lease.py [--cycles 2000] [--transport tcp|ipc]

Each cycle is `lab.lease(...)` then `release()` through the sync SDK: two broker round
trips plus two SQLite commits (the lease is durable before it is granted).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time

from common import new_lab, percentiles


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=2000)
    ap.add_argument("--transport", choices=["tcp", "ipc"], default="tcp")
    args = ap.parse_args()
    h = new_lab(args.transport)
    try:
        h.start_broker()
        devices = [{"name": "solo", "labels": {"role": "solo"}}]
        devices += [{"name": f"g{i}", "labels": {"dut": "group", "role": "g"}} for i in range(3)]
        h.start_service({"service": "bench", "kind": "power", "driver": "mock", "devices": devices,
                         "on_release": "keep"})  # fmt: skip
        lab = h.lab(timeout=10)
        out = {}
        for name, selector in (("one_device", "role=solo"), ("three_device_group", "dut=group")):
            samples = []
            for i in range(args.cycles + 100):
                t0 = time.perf_counter()
                lease = lab.lease(selector, duration="1m")
                lease.release(reset=False)
                if i >= 100:
                    samples.append(time.perf_counter() - t0)
            out[name] = percentiles(samples)
        print(json.dumps(out, indent=2))
        for name, p in out.items():
            print(
                f"lease acquire+release {name}: p50 {p['p50_us'] / 1000:.2f} ms, p99 {p['p99_us'] / 1000:.2f} ms (target p50 < 2 ms)"
            )
    finally:
        h.close()
        shutil.rmtree(h.root, ignore_errors=True)


if __name__ == "__main__":
    main()
