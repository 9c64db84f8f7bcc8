"""One broker with 10,000 devices: registration, label queries, memory; and idle RSS.

    python bench/scale.py [--devices 10000]

Fake services register 1,000 devices each over raw DEALER sockets (and keep heart-
beating), then the sync SDK runs label queries: a selective one (a few matches), and a
full listing. Also the RSS of the broker, and of an idle mock power service started the
way `labctl lab up` starts it and the way `labctl service run` does.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import zmq
from common import new_lab, percentiles

from labctl import protocol
from tests.harness import LABCTL, wait_until


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def register_fakes(bus: str, total: int, per_service: int = 1000) -> list[zmq.Socket]:
    socks = []
    ctx = zmq.Context.instance()
    for s in range(0, total, per_service):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(bus)
        devices = [
            {"name": f"dev{i:05d}", "kind": "power", "driver": "mock",
             "labels": {"site": f"lab{i % 10}", "board": ("rpi4", "imx8", "am62")[i % 3], "dut": f"d{i}",
                        "rack": f"r{i % 50}"},
             "interface": {"methods": {"state": {"args": [], "mutating": False}}}}
            for i in range(s, min(s + per_service, total))
        ]  # fmt: skip
        header = {"service": f"fake{s}"}
        sock.send_multipart(protocol.encode(protocol.REGISTER, header, protocol.pack(devices)))
        assert sock.poll(30000), "no welcome"
        assert protocol.decode(sock.recv_multipart()).mtype == protocol.WELCOME
        socks.append(sock)
    return socks


def timed(fn, n: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return {k.replace("_us", "_ms"): v / 1000 for k, v in percentiles(samples).items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=10000)
    args = ap.parse_args()
    h = new_lab("ipc", heartbeat=30)
    try:
        broker = h.start_broker()
        t0 = time.perf_counter()
        socks = register_fakes(h.bus, args.devices)
        register_s = time.perf_counter() - t0
        lab = h.lab(timeout=30)
        assert len(lab.devices("rack=r7,site=lab7")) > 0
        out = {
            "devices": args.devices,
            "register_all_s": register_s,
            "selective_query_ms": timed(lambda: lab.devices("board=rpi4,site=lab3,rack=r13"), 200),
            "no_match_query_ms": timed(lambda: lab.devices("board=pi5"), 200),
            "full_listing_ms": timed(lambda: lab.devices(), 20),
            "broker_rss_mb": rss_mb(broker.pid),
        }
        for s in socks:
            s.close()
        svc_cfg = h.write_config({"service": "idle", "kind": "power", "driver": "mock"})
        for how, argv in (("python -m labctl.services", [sys.executable, "-m", "labctl.services", str(svc_cfg)]),
                          ("labctl service run", [*LABCTL, "service", "run", str(svc_cfg)])):  # fmt: skip
            proc = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
            try:
                wait_until(
                    lambda: any(
                        d["name"] == "idle" and d["online"] for d in lab.devices("name=idle")
                    ),
                    20,
                )
                time.sleep(1.0)  # idle means idle: let start-up garbage settle
                out[f"idle_service_rss_mb ({how})"] = rss_mb(proc.pid)
            finally:
                proc.terminate()
                proc.wait(10)
        print(json.dumps(out, indent=2))
        q = out["selective_query_ms"]
        full = out["full_listing_ms"]
        print(
            f"{args.devices} devices: selective query p50 {q['p50_ms']:.2f} ms (target < 20), "  # type: ignore[index]
            f"full listing p50 {full['p50_ms']:.1f} ms, broker RSS {out['broker_rss_mb']:.0f} MB"
        )  # type: ignore[index]
    finally:
        h.close()
        shutil.rmtree(h.root, ignore_errors=True)


if __name__ == "__main__":
    main()
