"""Does an audience slow the broker down? RPC p50 with and without 50 dashboard pages.

    python bench/dashboard.py [--calls 3000] [--rounds 6] [--pages 50] [--events-hz 20]

One broker with the dashboard on (tcp, loopback) and a mock PDU. Rounds alternate: "quiet"
(no WebSockets) and "watched" (``--pages`` WebSockets reading everything, plus one that
connects and never reads, its receive buffer shrunk so it stalls at once). In both, a
background client toggles another outlet ``--events-hz`` times a second, so the watched
pages really receive status events and lab pushes while RPCs are measured. The RPC is
``state()`` from the sync SDK. Target (issue 14): watched p50 within 10% of quiet p50.
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing as mp
import os
import select
import socket
import sys
import threading
import time
import urllib.request
from typing import Any

from common import new_lab, percentiles

from labctl.lab import Lab
from tests.harness import LABCTL, Proc, free_port, power_service, wait_until


def ws_connect(host: str, port: int, rcvbuf: int | None = None) -> socket.socket:
    """A WebSocket on /ws after the HTTP upgrade (RFC 6455), as a plain socket."""
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)  # byte by byte: leave the first frame in the socket
        if not chunk:
            raise ConnectionError("closed during the upgrade")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.decode(errors="replace"))
    return s


def pages(host: str, port: int, n: int, ready: Any, stop: Any, counts: Any) -> None:
    """``n`` reading pages and one stuck page, until ``stop`` is set."""
    socks = [ws_connect(host, port) for _ in range(n)]
    stuck = ws_connect(host, port, rcvbuf=4096)  # never read again
    ready.set()
    received = 0
    while not stop.is_set():
        readable, _, _ = select.select(socks, [], [], 0.1)
        for s in readable:
            received += len(s.recv(65536))
    counts.value = received
    for s in [*socks, stuck]:
        s.close()


def toggler(bus: str, stop: threading.Event, hz: float) -> None:
    with Lab(bus) as lab, lab.lease("dut=rpi4-02", duration="1h") as lease:
        on = False
        while not stop.is_set():
            on = not on
            lease.power.on() if on else lease.power.off()
            time.sleep(1 / hz)


def measure(dev: Any, calls: int) -> list[float]:
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        dev.state()
        samples.append(time.perf_counter() - t0)
    return samples


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--pages", type=int, default=50)
    ap.add_argument("--events-hz", type=float, default=20.0)
    args = ap.parse_args()

    lab = new_lab(transport="tcp")
    dash_port = free_port()
    argv = [*LABCTL, "broker", "run", "--bus", lab.bus, "--events", lab.events,
            "--state", str(lab.root / "state"), "--heartbeat", "1.0", "--lease-grace", "60s",
            "--dashboard", f"127.0.0.1:{dash_port}"]  # fmt: skip
    lab.broker = Proc(argv, lab.root / "broker.log", lab.env).start()
    lab.procs.append(lab.broker)
    url = f"http://127.0.0.1:{dash_port}"

    def serving() -> bool:
        try:
            with urllib.request.urlopen(url + "/api/leases", timeout=1):
                return True
        except OSError:
            return False

    stop_toggle = threading.Event()
    spawn = mp.get_context("spawn")  # no fork of a process holding zmq sockets and threads
    toggle: threading.Thread | None = None
    try:
        wait_until(serving, 30, "the dashboard")
        lab.start_service(power_service("pdu1", outlets=2))
        client = Lab(lab.bus)
        dev = client.device("pdu1.1")
        measure(dev, 500)  # warm up
        toggle = threading.Thread(target=toggler, args=(lab.bus, stop_toggle, args.events_hz))
        toggle.start()
        quiet: list[float] = []
        watched: list[float] = []
        received = 0
        rounds: list[tuple[float, float]] = []
        for _ in range(args.rounds):
            q_round = measure(dev, args.calls)
            quiet += q_round
            ready, stop = spawn.Event(), spawn.Event()
            counts = spawn.Value("q", 0)
            proc = spawn.Process(
                target=pages, args=("127.0.0.1", dash_port, args.pages, ready, stop, counts)
            )
            proc.start()
            if not ready.wait(30):
                raise SystemExit("pages did not connect")
            with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
                text = r.read().decode()
            assert f"labctl_dashboard_clients {args.pages + 1}" in text, "pages not counted"
            w_round = measure(dev, args.calls)
            watched += w_round
            rounds.append((percentiles(q_round)["p50_us"], percentiles(w_round)["p50_us"]))
            stop.set()
            proc.join(10)
            received += counts.value
        with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
            metrics = r.read().decode()
        resyncs = [ln for ln in metrics.splitlines() if ln.startswith("labctl_dashboard_resyncs")]
        q, w = percentiles(quiet), percentiles(watched)
        result = {
            "calls_per_side": len(quiet),
            "quiet": q,
            "watched": w,
            "p50_ratio": w["p50_us"] / q["p50_us"],
            "p50_us_per_round_quiet_watched": [[round(a), round(b)] for a, b in rounds],
            "pages": args.pages,
            "stuck_pages": 1,
            "page_bytes_received": received,
            "events_hz": args.events_hz,
            "resyncs": resyncs,
        }
        print(json.dumps(result, indent=2))
        ok = result["p50_ratio"] <= 1.10
        print(
            f"watched p50 / quiet p50 = {result['p50_ratio']:.3f} ({'ok' if ok else 'OVER 1.10'})"
        )
        client.close()
    finally:
        stop_toggle.set()
        if toggle is not None:
            toggle.join(10)
        lab.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
