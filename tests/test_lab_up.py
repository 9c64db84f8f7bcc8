"""`labctl lab up`: the broker plus supervised service processes, stopped cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from labctl.lab import Lab

from .harness import wait_until


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _processes(up: int) -> list[tuple[str, int]]:
    """lab up's processes (name, pid): its children, and the services its fork server forked."""
    out = []
    for pid in _children(up):
        comm = _comm(pid)
        if comm == "lab-forkserver":
            out += [(_comm(c), c) for c in _children(pid)]
        out.append((comm, pid))
    return out


def test_lab_up_starts_restarts_and_stops_everything(workdir) -> None:  # type: ignore[no-untyped-def]
    bus = f"ipc://{workdir}/bus"
    lab_file = workdir / "lab.yaml"
    lab_file.write_text(yaml.safe_dump({
        "broker": {"bus": bus, "events": f"ipc://{workdir}/events", "heartbeat": 0.2},
        "services": [
            {"service": "pdu1", "kind": "power", "driver": "mock",
             "devices": [{"name": "pdu1.1", "labels": {"dut": "a"}}, {"name": "pdu1.2", "labels": {"dut": "b"}}]},
            {"service": "plug", "kind": "power", "driver": "mock", "labels": {"dut": "c"}},
        ],
    }))  # fmt: skip
    env = dict(os.environ, LABCTL_BROKER=bus)
    log = open(workdir / "lab.log", "wb")  # noqa: SIM115
    up = subprocess.Popen([sys.executable, "-m", "labctl.cli", "lab", "up", str(lab_file), "--state", str(workdir / "state")],
                          env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    lab = Lab(bus, timeout=2)
    try:

        def names() -> list[str]:
            try:
                return sorted(d["name"] for d in lab.devices() if d["online"])
            except Exception:
                return []

        wait_until(lambda: names() == ["pdu1.1", "pdu1.2", "plug"], 30, "the lab to come up")
        procs = dict(_processes(up.pid))  # the broker is "python3"
        assert {"lab-forkserver", "svc:pdu1", "svc:plug"} <= set(procs) and len(procs) == 4, procs
        plug_pid = procs["svc:plug"]
        os.kill(plug_pid, signal.SIGKILL)
        wait_until(
            lambda: dict(_processes(up.pid)).get("svc:plug") not in (None, plug_pid),
            20,
            "a restart",
        )
        wait_until(lambda: "plug" in names(), 20, "the restarted service to register")
        # Healthy processes stay up: nothing restarts them on its own (trio's idle worker
        # threads exit after 10 s; children forked from one would be killed with it).
        steady = sorted(_processes(up.pid))
        with pytest.raises(AssertionError):
            wait_until(lambda: sorted(_processes(up.pid)) != steady, 11, "no restarts")
        up.send_signal(signal.SIGTERM)
        assert up.wait(20) == 0
        for _, pid in steady:
            assert (
                not os.path.exists(f"/proc/{pid}")
                or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
            )
    finally:
        lab.close()
        if up.poll() is None:
            up.kill()
            up.wait()
        log.close()


def test_killing_lab_up_takes_its_children_with_it(workdir) -> None:  # type: ignore[no-untyped-def]
    bus = f"ipc://{workdir}/bus"
    argv = [sys.executable, "-m", "labctl.cli", "lab", "up", "--bus", bus, "--events", f"ipc://{workdir}/ev",
            "--state", str(workdir / "state")]  # fmt: skip
    up = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(
            lambda: len(_processes(up.pid)) == 8,
            20,
            "broker, fork server, 4 services, 2 simulated boards",
        )
        children = [pid for _, pid in _processes(up.pid)]
        up.kill()  # SIGKILL: lab up gets no chance to clean up
        up.wait()
        wait_until(
            lambda: not any(os.path.exists(f"/proc/{p}") for p in children), 10, "orphans to exit"
        )
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


def test_lab_up_rejects_a_bad_lab_file_before_starting_anything(workdir) -> None:  # type: ignore[no-untyped-def]
    lab_file = workdir / "lab.yaml"
    lab_file.write_text(
        yaml.safe_dump(
            {"services": [{"service": "x", "kind": "power", "driver": "mock", "labelz": {}}]}
        )
    )
    r = subprocess.run(
        [sys.executable, "-m", "labctl.cli", "lab", "up", str(lab_file)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "services[0]: labelz: unknown field" in r.stderr


def test_the_built_in_example_lab_boots_a_simulated_board(workdir) -> None:  # type: ignore[no-untyped-def]
    bus = f"ipc://{workdir}/bus"
    argv = [sys.executable, "-m", "labctl.cli", "lab", "up", "--bus", bus, "--events", f"ipc://{workdir}/ev",
            "--state", str(workdir / "state")]  # fmt: skip
    log = open(workdir / "lab.log", "wb")  # noqa: SIM115
    up = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    lab = Lab(bus, timeout=5)
    try:
        expected = ["rpi4-01-console", "rpi4-01-power", "rpi4-01-storage",
                    "rpi4-02-console", "rpi4-02-power", "rpi4-02-storage"]  # fmt: skip

        def online() -> list[str]:
            try:
                return sorted(d["name"] for d in lab.devices("board=rpi4") if d["online"])
            except Exception:
                return []

        wait_until(lambda: online() == expected, 30, "the example lab")
        with lab.lease("dut=rpi4-02") as lease:
            con = lease.serial.console()
            lease.power.on()
            con.expect("rpi4-02 login:", timeout=20)
            con.close()
        up.send_signal(signal.SIGINT)
        assert up.wait(20) == 0
    finally:
        lab.close()
        if up.poll() is None:
            up.kill()
            up.wait()
        log.close()


def test_lab_example_prints_the_lab_file_that_lab_up_runs_without_one(workdir) -> None:  # type: ignore[no-untyped-def]
    from labctl.cli.lab_up import load_lab

    r = subprocess.run([sys.executable, "-m", "labctl.cli", "lab", "example"],
                       capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
    copy = workdir / "lab.yaml"
    copy.write_text(r.stdout)
    run = workdir / "run"
    assert load_lab(str(copy), run) == load_lab(None, run)
    assert load_lab(None, run)["services"][1]["config"]["url"] == f"{run}/rpi4-01.tty"


def test_lab_up_refuses_an_address_another_lab_holds(workdir) -> None:  # type: ignore[no-untyped-def]
    import socket

    with socket.socket() as other:  # another lab's broker, listening on the bus port
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "labctl.cli", "lab", "up", "--bus", f"tcp://127.0.0.1:{port}",
             "--events", f"ipc://{workdir}/ev", "--dashboard", "off", "--state", str(workdir / "s")],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: bus address tcp://127.0.0.1:{port} is in use (another lab?)"
    assert not (workdir / "s" / "run").exists()  # nothing started
