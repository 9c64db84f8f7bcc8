"""`labctl lab up` serves the dashboard on loopback and prints its URL at start."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from pathlib import Path

from ..harness import LABCTL, free_port, wait_until

LAB = """\
broker: {{bus: "tcp://127.0.0.1:{bus}", events: "tcp://127.0.0.1:{events}"}}
services:
  - {{service: pdu7, kind: power, driver: mock, name: pdu7-power, labels: {{dut: b7}}}}
"""


def test_lab_up_prints_the_dashboard_url_and_serves_it(workdir: Path) -> None:
    lab = workdir / "lab.yaml"
    lab.write_text(LAB.format(bus=free_port(), events=free_port()))
    port = free_port()
    argv = [*LABCTL, "lab", "up", str(lab), "--state", str(workdir / "state"),
            "--dashboard", f"127.0.0.1:{port}"]  # fmt: skip
    log = workdir / "lab-up.log"
    with open(log, "wb") as out:
        up = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until(lambda: f"dashboard: {url}" in log.read_text(), 20, "the URL printed")

        def devices() -> list[str]:
            try:
                with urllib.request.urlopen(url + "api/devices", timeout=1) as r:
                    return [d["name"] for d in json.loads(r.read()) if d["online"]]
            except OSError:
                return []

        assert wait_until(devices, 30, "pdu7-power on the dashboard") == ["pdu7-power"]
        with urllib.request.urlopen(url, timeout=2) as r:
            assert b"<title>labctl</title>" in r.read()
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=20)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
