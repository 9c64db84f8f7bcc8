"""A small simulated lab with the dashboard on, and a real browser to look at it.

The browser is Debian's chromium driven by Playwright (the Python package from PyPI, no
browser download): without either, the browser tests skip and say why.
"""

from __future__ import annotations

import os
import shutil
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..harness import LABCTL, LabHarness, Proc, free_port, power_service, wait_until

CHROMIUM = os.environ.get("LABCTL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


class DashboardLab(LabHarness):
    """LabHarness on tcp with the broker serving the dashboard on a free loopback port."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, transport="tcp", heartbeat=0.2, grace="5s")
        self.dashboard = f"127.0.0.1:{free_port()}"
        self.url = f"http://{self.dashboard}"

    def start_broker(self, wait: bool = True) -> Proc:
        argv = [*LABCTL, "broker", "run", "--bus", self.bus, "--events", self.events,
                "--state", str(self.root / "state"), "--heartbeat", str(self.heartbeat),
                "--lease-grace", self.grace, "--dashboard", self.dashboard]  # fmt: skip
        self.broker = Proc(argv, self.root / "broker.log", self.env).start()
        self.procs.append(self.broker)
        if wait:
            wait_until(self._serving, 20, f"the dashboard at {self.url}")
        return self.broker

    def _serving(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/api/leases", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def get(self, path: str) -> Any:
        import json

        with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as r:
            return json.loads(r.read())

    def start_board(self, name: str) -> Proc:
        """simdut playing board ``name``: its console on a pty, powered by ``name``.power."""
        run = self.root / "run"
        run.mkdir(exist_ok=True)
        argv = [sys.executable, "-m", "labctl.services.simulators.simdut",
                "--link", str(run / f"{name}.tty"), "--power-file", str(run / f"{name}.power"),
                "--hostname", name, "--boot-delay", "0.1"]  # fmt: skip
        proc = Proc(argv, self.root / f"{name}-dut.log", self.env).start()
        self.procs.append(proc)
        wait_until(lambda: (run / f"{name}.tty").exists(), 10, f"{name}'s pty")
        return proc


@pytest.fixture(scope="package")
def dash_root() -> Iterator[Path]:
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="lc-dash-", dir="/tmp"))
    yield path
    if not os.environ.get("LABCTL_KEEP_TEST_DIRS"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="package")
def dash_lab(dash_root: Path) -> Iterator[DashboardLab]:
    """Broker + dashboard; pdu1 powering board rpi4-01 (simdut) with its console; pdu2, a
    second PDU the offline test stops."""
    lab = DashboardLab(dash_root)
    try:
        lab.start_broker()
        run = dash_root / "run"
        lab.start_board("rpi4-01")
        pdu = power_service("pdu1", outlets=1, dut_prefix="rpi4-0")
        pdu["devices"][0]["config"] = {"state_file": str(run / "rpi4-01.power")}
        lab.start_service(pdu)
        lab.start_service({"service": "rpi4-01-console", "kind": "serial", "driver": "pyserial",
                           "labels": {"dut": "rpi4-01", "board": "rpi4", "site": "lab1"},
                           "config": {"url": str(run / "rpi4-01.tty"), "reconnect_interval": 0.2}})  # fmt: skip
        lab.start_service(power_service("pdu2", outlets=2, dut_prefix="spare-"))
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (apt install chromium)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1600, "height": 900})
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    yield p
    context.close()
    assert not errors, f"the page raised: {errors}"


def screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path
