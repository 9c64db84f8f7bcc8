"""Real processes for tests: a broker and services started as `labctl` subprocesses.

Everything listens on ipc:// paths in a private temp dir, or on ephemeral tcp ports on
127.0.0.1; every process started here is stopped (SIGTERM, then SIGKILL) at teardown.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from labctl.lab import Lab

LABCTL = [sys.executable, "-m", "labctl.cli"]


def trio_test(fn: Callable[..., Any]) -> Callable[..., None]:
    """Run an async test function (fixtures still injected by pytest) under ``trio.run``."""
    import functools

    import trio

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        trio.run(functools.partial(fn, *args, **kwargs))

    return wrapper


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 nothing listens on now (``socket.SOCK_DGRAM`` for UDP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``cond`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


class Proc:
    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.argv, self.log, self.env = argv, log, env
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        out = open(self.log, "ab")  # noqa: SIM115 (the child owns it)
        self.popen = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        out.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(sig)
            self.popen.wait(10)

    def stop(self) -> None:
        if not self.alive():
            return
        assert self.popen is not None
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class LabHarness:
    """A broker plus services in one temp dir; ``lab()`` gives SDK clients on it."""

    def __init__(
        self, root: Path, transport: str = "ipc", heartbeat: float = 0.2, grace: str = "1s"
    ) -> None:
        self.root = root
        self.heartbeat = heartbeat
        self.grace = grace
        if transport == "tcp":
            self.bus = f"tcp://127.0.0.1:{free_port()}"
            self.events = f"tcp://127.0.0.1:{free_port()}"
        else:
            self.bus = f"ipc://{root}/bus"
            self.events = f"ipc://{root}/events"
        self.env = dict(os.environ, LABCTL_BROKER=self.bus, LABCTL_LOG_LEVEL="info")
        self.procs: list[Proc] = []
        self.broker: Proc | None = None
        self._labs: list[Lab] = []

    def start_broker(self, wait: bool = True, extra: tuple[str, ...] = ()) -> Proc:
        argv = [*LABCTL, "broker", "run", "--bus", self.bus, "--events", self.events,
                "--state", str(self.root / "state"), "--heartbeat", str(self.heartbeat),
                "--lease-grace", self.grace, *extra]  # fmt: skip
        self.broker = Proc(argv, self.root / "broker.log", self.env).start()
        self.procs.append(self.broker)
        if wait:
            probe = Lab(self.bus, timeout=0.5)
            try:
                wait_until(lambda: _answers(probe), 15, "the broker to answer")
            finally:
                probe.close()
        return self.broker

    def write_config(self, cfg: dict[str, Any]) -> Path:
        path = self.root / f"{cfg['service']}.yaml"
        path.write_text(yaml.safe_dump({"broker": self.bus, **cfg}))
        return path

    def start_service(self, cfg: dict[str, Any], wait: bool = True) -> Proc:
        path = self.write_config(cfg)
        proc = Proc(
            [*LABCTL, "service", "run", str(path)], self.root / f"{cfg['service']}.log", self.env
        ).start()
        self.procs.append(proc)
        if wait:
            names = [d["name"] for d in cfg.get("devices", [])] or [cfg.get("name", cfg["service"])]
            self.wait_online(names)
        return proc

    def wait_online(self, names: list[str], online: bool = True, timeout: float = 15) -> None:
        lab = self.lab()

        def ready() -> bool:
            try:
                devs = {d["name"]: d for d in lab.devices()}
            except Exception:
                return False
            return all(n in devs and devs[n]["online"] == online for n in names)

        wait_until(ready, timeout, f"{names} online={online}")

    def lab(self, timeout: float = 5.0) -> Lab:
        lab = Lab(self.bus, timeout=timeout)
        self._labs.append(lab)
        return lab

    def run_cli(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*LABCTL, *args],
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
            timeout=timeout,
        )

    def close(self) -> None:
        for lab in self._labs:
            lab.close()
        for proc in reversed(self.procs):
            proc.stop()


def _answers(lab: Lab) -> bool:
    try:
        lab.client.call("hello")
        return True
    except Exception:
        lab.client.close()
        from labctl.client import BusClient

        lab.client = BusClient(lab.address, 0.5)
        return False


def power_service(
    name: str = "pdu1", outlets: int = 2, dut_prefix: str = "rpi4-0", **extra: Any
) -> dict[str, Any]:
    """A mock PDU service config: devices `<name>.1` ... each its own DUT group."""
    return {
        "service": name,
        "kind": "power",
        "driver": "mock",
        "labels": {"site": "lab1"},
        "devices": [
            {"name": f"{name}.{i}", "labels": {"dut": f"{dut_prefix}{i}", "board": "rpi4"}}
            for i in range(1, outlets + 1)
        ],
        **extra,
    }


class LabUp:
    """``labctl lab up [LAB_FILE]`` as a process on ipc:// addresses in ``root`` (dashboard off),
    with a ``Lab`` on its bus; ``online(selector)`` lists the devices that are up. As a context
    manager it stops the lab with SIGINT and checks it exits 0 (kills it if the body failed)."""

    def __init__(self, root: Path, lab_file: Path | None = None, timeout: float = 5) -> None:
        self.bus = f"ipc://{root}/bus"
        argv = [*LABCTL, "lab", "up", *([str(lab_file)] if lab_file else []), "--bus", self.bus,
                "--events", f"ipc://{root}/ev", "--state", str(root / "state"),
                "--dashboard", "off"]  # fmt: skip
        self._log = open(root / "lab.log", "wb")  # noqa: SIM115 (closed in __exit__)
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        self.lab = Lab(self.bus, timeout=timeout)

    def online(self, selector: str) -> list[str]:
        try:
            return sorted(d["name"] for d in self.lab.devices(selector) if d["online"])
        except Exception:
            return []

    def wait_online(self, selector: str, expected: list[str], timeout: float, what: str) -> None:
        wait_until(lambda: self.online(selector) == sorted(expected), timeout, what)

    def __enter__(self) -> LabUp:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        try:
            if exc_type is None:
                self.proc.send_signal(signal.SIGINT)
                assert self.proc.wait(30) == 0
        finally:
            self.lab.close()
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()
