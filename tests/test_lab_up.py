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

from .harness import LabUp, wait_until


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
    assert r.returncode == 2 and "services[0] (x): labelz: unknown field" in r.stderr


def _lab_up_fails(workdir, lab: dict) -> str:  # type: ignore[no-untyped-def,type-arg]
    """Run ``lab up`` on ``lab`` as a user would; it must exit 2 starting nothing: its stderr."""
    lab_file = workdir / "lab.yaml"
    lab_file.write_text(yaml.safe_dump(lab))
    r = subprocess.run(
        [sys.executable, "-m", "labctl.cli", "lab", "up", str(lab_file), "--state", str(workdir / "s"),
         "--bus", f"ipc://{workdir}/bus", "--events", f"ipc://{workdir}/ev", "--dashboard", "off"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert not (workdir / "s" / "run").exists()  # nothing started
    assert "Traceback" not in r.stderr and "pydantic" not in r.stderr
    assert "<unicode string>" not in r.stderr and "/tmp/labctl-lab-" not in r.stderr
    return r.stderr.strip().removeprefix("error: ")


def test_lab_up_names_the_file_entry_and_field_of_every_kind_of_lab_file_mistake(workdir) -> None:  # type: ignore[no-untyped-def]
    f = str(workdir / "lab.yaml")
    ok = {"service": "pduA", "kind": "power", "driver": "mock"}
    snmp = {"service": "pduC", "kind": "power", "driver": "snmp",
            "config": {"host": "127.0.0.1", "model": "apc", "comunity": "private"},
            "devices": [{"name": "c1", "config": {"outlet": 1}}, {"name": "c2", "config": {"outlet": 2}}]}  # fmt: skip
    netio = {"service": "pduB", "kind": "power", "driver": "netio"}
    # a typo in the service-level config is the service's, shown once, not devices[0]'s
    assert _lab_up_fails(workdir, {"services": [ok, ok | {"service": "pduB"}, snmp]}) == (
        f"{f}: services[2] (pduC): config.comunity: unknown field (check the spelling)"
    )
    bad_device = snmp | {
        "config": {"host": "h", "model": "apc"},
        "devices": [{"name": "c1", "config": {"outlett": 1}}],
    }
    assert _lab_up_fails(workdir, {"services": [bad_device]}).startswith(
        f"{f}: services[0] (pduC): devices[0] (c1): config.outlett: unknown field"
    )
    assert _lab_up_fails(workdir, {"services": [ok, netio]}).startswith(
        f"{f}: services[1] (pduB): driver: unknown power driver 'netio'; known: "
    )
    assert _lab_up_fails(workdir, {"broker": {"heartbeet": 2}, "services": [ok]}) == (
        f"{f}: broker: heartbeet: unknown field (check the spelling)"
    )
    assert _lab_up_fails(workdir, {"broker": {"lease_grace": "soon"}, "services": [ok]}).startswith(
        f"{f}: broker: lease_grace: invalid duration 'soon'"
    )
    assert _lab_up_fails(workdir, {"services": [ok, ok]}) == (
        f"{f}: services[1] (pduA): service name 'pduA' appears twice"
    )
    (workdir / "lab.yaml").write_text("services:\n  - service: [x\n")
    r = subprocess.run([sys.executable, "-m", "labctl.cli", "lab", "up", f],
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 2 and r.stderr.startswith(f"error: {f}:3:1: not valid YAML: "), r.stderr


def test_lab_up_refuses_a_simulator_whose_command_does_not_exist(workdir) -> None:  # type: ignore[no-untyped-def]
    lab = {"simulators": [{"name": "sock", "command": ["soccat", "pty,link=x", "pty"]}],
           "services": [{"service": "pduA", "kind": "power", "driver": "mock"}]}  # fmt: skip
    assert _lab_up_fails(workdir, lab) == (
        f"{workdir / 'lab.yaml'}: simulators[0] (sock): command not found: soccat"
    )
    lab["simulators"] = [{"name": "sock"}]
    assert _lab_up_fails(workdir, lab) == (
        f"{workdir / 'lab.yaml'}: simulators[0] (sock): command: required field missing"
    )


def test_the_built_in_example_lab_boots_a_simulated_board(workdir) -> None:  # type: ignore[no-untyped-def]
    with LabUp(workdir) as up:
        expected = ["rpi4-01-console", "rpi4-01-power", "rpi4-01-storage",
                    "rpi4-02-console", "rpi4-02-power", "rpi4-02-storage"]  # fmt: skip
        up.wait_online("board=rpi4", expected, 30, "the example lab")
        with up.lab.lease("dut=rpi4-02") as lease:
            con = lease.serial.console()
            lease.power.on()
            con.expect("rpi4-02 login:", timeout=20)
            con.close()


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


def test_lab_up_says_which_part_keeps_failing_and_why_one_prefixed_line_per_record(workdir) -> None:  # type: ignore[no-untyped-def]
    import re

    lab_file = workdir / "lab.yaml"
    lab_file.write_text(yaml.safe_dump({
        "broker": {"bus": f"ipc://{workdir}/bus", "events": f"ipc://{workdir}/ev", "dashboard": "off"},
        "simulators": [{"name": "sim", "command": ["sh", "-c", "echo 'error: no pty here' >&2; exit 3"]}],
        "services": [
            {"service": "pdu1", "kind": "power", "driver": "mock"},
            {"service": "card", "kind": "storage", "driver": "mock", "config": {"path": "/proc/nope/card"}},
        ],
    }))  # fmt: skip
    log_path = workdir / "lab.log"
    log = open(log_path, "wb")  # noqa: SIM115
    up = subprocess.Popen([sys.executable, "-m", "labctl.cli", "lab", "up", str(lab_file), "--state", str(workdir / "s")],
                          stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_until(lambda: log_path.read_text().count("keeps failing") == 2, 30, "both reports")
        text = log_path.read_text()
        assert (
            "lab | sim keeps failing (exit 3, 3 times in a row): error: no pty here "
            "(still retrying, every 30 s at most)\n" in text
        )
        assert re.search(r"^lab \| card keeps failing \(exit 1, 3 times in a row\): "
                         r"FileNotFoundError: .*'/proc/nope'", text, re.M)  # fmt: skip
        assert text.count("sim keeps failing") == 1  # said once, not at every restart
        lab = Lab(f"ipc://{workdir}/bus", timeout=5)
        try:  # the rest of the lab runs; the failing service's device is listed offline, and why

            def card() -> dict | None:  # type: ignore[type-arg]
                devices = {d["name"]: d for d in lab.devices()}
                if devices.get("pdu1", {}).get("online") and "card" in devices:
                    return devices["card"]  # type: ignore[no-any-return]
                return None

            listed = wait_until(card, 20, "pdu1 online and card listed")
            assert not listed["online"] and listed["kind"] == "storage"

            def shown() -> str:  # (for a moment at each retry it is just "not heard from")
                return subprocess.run(
                    [sys.executable, "-m", "labctl.cli", "device", "show", "card"],
                    capture_output=True, text=True, timeout=30,
                    env=dict(os.environ, LABCTL_BROKER=f"ipc://{workdir}/bus"),
                ).stdout  # fmt: skip

            reason = "online:  no its service card keeps failing: FileNotFoundError: "
            wait_until(lambda: reason in shown(), 20, "the reason in device show")
            listing = subprocess.run(
                [sys.executable, "-m", "labctl.cli", "devices", "-o", "wide"],
                capture_output=True, text=True, timeout=30,
                env=dict(os.environ, LABCTL_BROKER=f"ipc://{workdir}/bus"),
            ).stdout  # fmt: skip
            assert re.search(r"^card +storage +mock +no: (its service card keeps failing: "
                             r"FileNotFoundError|service card not heard from)", listing, re.M), listing  # fmt: skip
        finally:
            lab.close()
        up.send_signal(signal.SIGTERM)
        assert up.wait(20) == 0
        # every record is one line of its own, prefixed by the process that printed it
        lines = [line for line in log_path.read_text().splitlines() if line]
        assert all(re.match(r"(lab|broker|sim|pdu1|card) \| ", line) for line in lines), lines
        assert "sim | error: no pty here" in lines
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        log.close()
