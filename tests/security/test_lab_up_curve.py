"""`labctl lab up` with a broker that runs CURVE: its own services (and the stand-in of one
that keeps failing) dial with a key of their own that the broker authorizes as role service;
people still need theirs in authorized_keys."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from labctl.keys import client_keys
from labctl.lab import Lab

from ..harness import wait_until
from .test_curve import CurveKeys, entry


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labctl.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_lab_up_with_curve_keys_its_own_services_and_people_bring_theirs(tmp_path: Path) -> None:
    keys = CurveKeys(tmp_path, broker_pair=False)  # lab up makes the broker's pair
    keys.authorize(entry(keys.make("alice"), "alice", "user"))
    bus = f"ipc://{tmp_path}/bus"
    lab_file = tmp_path / "lab.yaml"
    lab_file.write_text(yaml.safe_dump({
        "broker": {"bus": bus, "events": f"ipc://{tmp_path}/ev", "dashboard": "off",
                   "curve": True},
        "services": [
            {"service": "pdu1", "kind": "power", "driver": "mock"},
            {"service": "card", "kind": "storage", "driver": "mock",
             "config": {"path": "/proc/nope/card"}},  # keeps failing: its stand-in registers
        ],
    }))  # fmt: skip
    shell = {k: v for k, v in os.environ.items() if not k.startswith("LABCTL_")}
    log = open(tmp_path / "lab.log", "wb")  # noqa: SIM115 (closed below)
    up = subprocess.Popen([sys.executable, "-m", "labctl.cli", "lab", "up", str(lab_file),
                           "--state", str(keys.state)], env=shell, stdout=log,
                          stderr=subprocess.STDOUT)  # fmt: skip
    person = {**shell, "LABCTL_BROKER": bus, **keys.env("alice")}
    try:
        wait_until(lambda: keys.broker_key.exists(), 20, "the broker's key pair")
        alice = client_keys(str(keys.broker_key), str(keys.cfg / "alice.key_secret"))
        lab = Lab(bus, timeout=5, keys=alice)  # the SDK's keys, explicitly
        try:

            def listed() -> dict[str, bool]:
                try:
                    return {d["name"]: d["online"] for d in lab.devices()}
                except Exception:
                    return {}

            wait_until(lambda: listed() == {"pdu1": True, "card": False}, 30, "both registered")
        finally:
            lab.close()
        r = _cli(person, "power", "on", "pdu1")
        assert r.returncode == 0, r.stderr
        r = _cli(person, "lease", "acquire", "name=pdu1", "-o", "json")
        assert r.returncode == 0 and '"holder": "alice"' in r.stdout, r.stdout + r.stderr
        r = _cli({**shell, "LABCTL_BROKER": bus, "LABCTL_CONNECT_TIMEOUT": "1"}, "devices")
        assert r.returncode == 5 and "requires CURVE keys" in r.stderr, r.stderr
    finally:
        up.send_signal(signal.SIGINT)
        try:
            assert up.wait(30) == 0
        finally:
            if up.poll() is None:
                up.kill()
                up.wait()
            log.close()
    assert (keys.state / "lab-services.key_secret").stat().st_mode & 0o077 == 0
