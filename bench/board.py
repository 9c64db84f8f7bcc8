"""A QEMU board's loop: wall time from `storage flash` start to `login:`, phase by phase.

    python bench/board.py [--rounds 3] [--arch x86_64|aarch64]

Real processes: a broker, the board's storage (mock), power (qemu) and serial (pyserial)
services. Each round, with the board off: flash a zstd image with its bmap through the
broker (card to host, write, card to the DUT), power on, wait for ``login:`` on the
console stream. Phases: ``flash`` (the SDK call), ``power_on`` (the call: QEMU started and
its console connected), ``boot`` (power-on reply to ``login:``), ``total``. Medians of the
rounds; DESIGN §13: total under 10 s (x86_64). TCG only: numbers follow the host's load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import new_lab

from labctl.services.simulators.qemu_image import build_image
from tests.qemu.conftest import board_services


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--arch", choices=["x86_64", "aarch64"], default="x86_64")
    args = parser.parse_args()

    images = Path(tempfile.mkdtemp(prefix="lcb-img-", dir="/tmp"))
    started = time.perf_counter()
    image = build_image(images / "board.img", "bench-1", args.arch, "zstd")["zstd"]
    build_s = time.perf_counter() - started

    h = new_lab()
    rounds: list[dict[str, float]] = []
    try:
        h.start_broker()
        dut = "bench"
        for svc in board_services(h.root, args.arch, dut):
            h.start_service(svc)
        lab = h.lab(timeout=30)
        with lab.lease(f"dut={dut}") as lease:
            for _ in range(args.rounds):
                lease.power.off()
                with lease.serial.console() as con:
                    t0 = time.perf_counter()
                    lease.storage.flash(image)
                    t1 = time.perf_counter()
                    lease.power.on()
                    t2 = time.perf_counter()
                    con.expect("login: ", timeout=120)
                    t3 = time.perf_counter()
                rounds.append(
                    {"flash": t1 - t0, "power_on": t2 - t1, "boot": t3 - t2, "total": t3 - t0}
                )
            lease.power.off()
    finally:
        h.close()
    medians = {k: round(statistics.median(r[k] for r in rounds), 3) for k in rounds[0]}
    print(json.dumps({
        "arch": args.arch,
        "image_build_s": round(build_s, 3),
        "image_bytes": (images / "board.img").stat().st_size,
        "rounds": [{k: round(v, 3) for k, v in r.items()} for r in rounds],
        "median_s": medians,
        "target_total_s": 10.0,
        "ok": medians["total"] < 10.0,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
