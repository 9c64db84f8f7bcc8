"""Memory per service: a standalone idle service beside its libraries' floor, and 20
services under `labctl lab up`.

    python bench/memory.py [--services 20] [--rounds 3]

Reports RSS, PSS and USS (from /proc/PID/smaps_rollup) of each service process once every
device is online and the process has idled a second. USS (pages only that process holds) is
what one more service costs a lab host; PSS splits shared pages fairly; RSS counts shared
pages (Python, OpenSSL, pydantic-core, libzmq) in full for every process. Targets (DESIGN
§13): standalone RSS < 40 MB (38.1 MiB); under `lab up` with 20 services, USS < 12 MB each.

The floor, measured in the same rounds: a process that only does what every service's
libraries make it do (import trio, pyzmq, msgpack, pydantic, structlog and PyYAML, validate
one small model, log a line, idle in ``trio.run`` with one DEALER socket), with pydantic's
plugins off and importing them as a service does: the modules they import that an idle
service never uses (ssl, asyncio, ...: services/lazy_imports.py) are imported only on first
use. The service's RSS minus the floor's is what labctl itself adds. The eager floor is the
same process importing everything up front (about 42 MiB here: over the target); minus the
floor, it is what deferring those modules saves.

Every measured process reads its byte code from a cache this run warms first (in the run's
temp dir), as an installed labctl does (pip compiles it): with PYTHONDONTWRITEBYTECODE set,
a module edited since its last .pyc is compiled at each start, and the compiler's leftovers
(0.4-1.5 MB) would be measured as the service's.
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

from labctl.errors import LabError
from tests.harness import LABCTL, free_port, wait_until

#: argv: BUS ("service" | "eager"): import the libraries as a service does, or all at once
FLOOR = r"""
import contextlib, ctypes, gc, os, sys
from labctl.services.lazy_imports import deferred
os.environ["PYDANTIC_DISABLE_PLUGINS"] = "__all__"
with deferred() if sys.argv[2] == "service" else contextlib.nullcontext():
    import msgpack, structlog, trio, yaml, zmq
    from pydantic import BaseModel, ConfigDict

class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    service: str
    labels: dict[str, str] = {}

async def main():
    cfg = Config.model_validate(yaml.safe_load("service: floor\nlabels: {site: lab1}"))
    structlog.configure(
        processors=[structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.dev.ConsoleRenderer(colors=False)],
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(sys.argv[1])
    structlog.get_logger().info("idle", config=msgpack.unpackb(msgpack.packb(cfg.model_dump())))
    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)
    print("ready", flush=True)
    await trio.sleep_forever()

trio.run(main)
"""


MB = 1.048576  # MB per MiB


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


def median(samples: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(s[k] for s in samples), 1) for k in samples[0]}


def online(lab, selector: str) -> int:  # type: ignore[no-untyped-def]
    """How many devices ``selector`` matches are online; -1 while the broker is not answering
    (lab up starts it: on a busy host that can take longer than one call's timeout)."""
    try:
        return sum(d["online"] for d in lab.devices(selector))
    except LabError:
        return -1


def warm_byte_code(env: dict[str, str]) -> None:
    """Compile what services and `lab up` import into ``env``'s PYTHONPYCACHEPREFIX."""
    code = "import labctl.services.launch, labctl.services.power.mock, labctl.cli.main"
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    subprocess.run([sys.executable, "-c", FLOOR.replace("trio.run(main)", ""), "", "eager"],
                   env=env, check=True)  # fmt: skip


def standalone(h, lab) -> dict[str, float]:  # type: ignore[no-untyped-def]
    cfg = h.write_config({"service": "idle", "kind": "power", "driver": "mock"})
    proc = subprocess.Popen([*LABCTL, "service", "run", str(cfg)], env=h.env,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_until(lambda: online(lab, "name=idle") == 1, 30, "the service online")
        time.sleep(1.0)  # idle means idle: let start-up garbage settle
        return smaps(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)


def floor(h, how: str) -> dict[str, float]:  # type: ignore[no-untyped-def]
    proc = subprocess.Popen([sys.executable, "-c", FLOOR, h.bus, how], env=h.env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        time.sleep(1.0)
        return smaps(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)


def under_lab_up(
    root: Path, count: int, env: dict[str, str]
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Each forked service's memory, and the fork server's (paid once per lab host)."""
    bus, events = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    lab_file = root / "lab.yaml"
    lab_file.write_text(yaml.safe_dump({
        "broker": {"bus": bus, "events": events},
        "services": [{"service": f"pdu{i:02d}", "kind": "power", "driver": "mock",
                      "labels": {"dut": f"b{i:02d}"}} for i in range(count)],
    }))  # fmt: skip
    up = subprocess.Popen([*LABCTL, "lab", "up", str(lab_file), "--state", str(root / "state"),
                           "--dashboard", "off"], env=dict(env, LABCTL_BROKER=bus),
                          stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        from labctl.lab import Lab

        with Lab(bus, timeout=2) as lab:
            wait_until(lambda: online(lab, "kind=power") == count, 60, "every service online")
        time.sleep(1.0)
        samples, server = [], {}
        for pid in descendants(up.pid):
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            if comm.startswith("svc:"):  # forked services (the fork server itself is not one)
                samples.append(smaps(pid))
            elif comm == "lab-forkserver":
                server = smaps(pid)
        return samples, server
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    h = new_lab("ipc")
    env = {k: v for k, v in h.env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    h.env = env = dict(env, PYTHONPYCACHEPREFIX=str(h.root / "pycache"))
    alone, base, eager = [], [], []
    try:
        warm_byte_code(env)
        h.start_broker()
        lab = h.lab(timeout=5)
        for _ in range(args.rounds):  # interleaved: both see the same machine
            base.append(floor(h, "service"))
            eager.append(floor(h, "eager"))
            alone.append(standalone(h, lab))
        root = Path(new_lab("ipc").root)
        try:
            samples, server = under_lab_up(root, args.services, env)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    finally:
        h.close()
        shutil.rmtree(h.root, ignore_errors=True)
    service, libs, libs_eager = median(alone), median(base), median(eager)
    out = {"standalone_mib": service, "floor_mib": libs, "eager_floor_mib": libs_eager,
           "labctl_adds_rss_mib": round(service["rss"] - libs["rss"], 1),
           "deferring_saves_rss_mib": round(libs_eager["rss"] - libs["rss"], 1),
           "lab_up": {"services": len(samples), **summary(samples)},
           "fork_server_mib": {k: round(v, 1) for k, v in server.items()}}  # fmt: skip
    print(json.dumps(out, indent=2))
    lu = out["lab_up"]
    print(
        f"standalone idle service: RSS {service['rss']:.1f} MiB = {service['rss'] * MB:.1f} MB "
        f"(target < 40 MB = 38.1 MiB), USS {service['uss']:.1f} MiB; its libraries' floor: "
        f"RSS {libs['rss']:.1f} (labctl adds {out['labctl_adds_rss_mib']:.1f}; imported "
        f"eagerly {libs_eager['rss']:.1f}: deferring saves {out['deferring_saves_rss_mib']:.1f})"
        f"; under lab up ({len(samples)} services): USS median {lu['uss_median']:.1f} MiB "
        f"(target < 12), PSS {lu['pss_median']:.1f}, RSS {lu['rss_median']:.1f}; the fork "
        f"server: RSS {server.get('rss', 0):.1f}"
    )


if __name__ == "__main__":
    main()
