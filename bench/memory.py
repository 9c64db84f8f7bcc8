"""Memory per service: a standalone idle service, and 20 services under `labctl lab up`.

    python bench/memory.py [--services 20]

Reports RSS, PSS and USS (from /proc/PID/smaps_rollup) of each service process once every
device is online and the lab has idled a second. USS (pages only that process holds) is what
one more service costs a lab host; PSS splits shared pages fairly; RSS counts shared pages in
full for every process. Targets (DESIGN §13): standalone RSS < 40 MB; under `lab up` with 20
services, USS < 12 MB each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml
from common import new_lab

from tests.harness import LABCTL, free_port, wait_until


def smaps(pid: int) -> dict[str, float]:
    """RSS, PSS and USS of ``pid`` in MiB."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0])
    uss = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return {"rss": fields["Rss"] / 1024, "pss": fields["Pss"] / 1024, "uss": uss / 1024}


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc (children of children included)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out += kids
        todo += kids
    return out


def summary(samples: list[dict[str, float]]) -> dict[str, float]:
    return {
        f"{k}_{stat}": round(fn([s[k] for s in samples]), 1)
        for k in ("rss", "pss", "uss")
        for stat, fn in (("median", statistics.median), ("max", max))
    }


def standalone(h, lab) -> dict[str, float]:  # type: ignore[no-untyped-def]
    cfg = h.write_config({"service": "idle", "kind": "power", "driver": "mock"})
    proc = subprocess.Popen([*LABCTL, "service", "run", str(cfg)], env=h.env,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_until(lambda: any(d["online"] for d in lab.devices("name=idle")), 30)
        time.sleep(1.0)  # idle means idle: let start-up garbage settle
        return smaps(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)


def under_lab_up(root: Path, count: int) -> tuple[list[dict[str, float]], list[str]]:
    bus, events = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    lab_file = root / "lab.yaml"
    lab_file.write_text(yaml.safe_dump({
        "broker": {"bus": bus, "events": events},
        "services": [{"service": f"pdu{i:02d}", "kind": "power", "driver": "mock",
                      "labels": {"dut": f"b{i:02d}"}} for i in range(count)],
    }))  # fmt: skip
    env = dict(os.environ, LABCTL_BROKER=bus)
    up = subprocess.Popen([*LABCTL, "lab", "up", str(lab_file), "--state", str(root / "state")],
                          env=env, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        from labctl.lab import Lab

        with Lab(bus, timeout=2) as lab:
            wait_until(
                lambda: sum(d["online"] for d in lab.devices("kind=power")) == count,
                60,
                "every service online",
            )
        time.sleep(1.0)
        samples, names = [], []
        for pid in descendants(up.pid):
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            if comm.startswith("svc:"):  # forked services (the fork server itself is not one)
                samples.append(smaps(pid))
                names.append(comm)
        return samples, names
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=20)
    args = ap.parse_args()
    h = new_lab("ipc")
    try:
        h.start_broker()
        alone = standalone(h, h.lab(timeout=5))
    finally:
        h.close()
        shutil.rmtree(h.root, ignore_errors=True)
    root = Path(new_lab("ipc").root)
    try:
        samples, _ = under_lab_up(root, args.services)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out = {"standalone_mib": {k: round(v, 1) for k, v in alone.items()},
           "lab_up": {"services": len(samples), **summary(samples)}}  # fmt: skip
    print(json.dumps(out, indent=2))
    lu = out["lab_up"]
    print(
        f"standalone idle service: RSS {alone['rss']:.1f} MiB (target < 40), USS {alone['uss']:.1f}; "
        f"under lab up ({len(samples)} services): USS median {lu['uss_median']:.1f} MiB "
        f"(target < 12), PSS {lu['pss_median']:.1f}, RSS {lu['rss_median']:.1f}",
        file=sys.stdout,
    )


if __name__ == "__main__":
    main()
