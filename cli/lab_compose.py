"""``labctl lab compose``: the lab file that ``lab up`` runs, as a Docker Compose file.

One container per service and per simulator plus the broker, all from the one image the
repo's Dockerfile builds. What ``lab up`` shares through the machine it is on, containers
share otherwise:

- the lab's run directory (``${run}``: power files, storage cards) and the broker's state
  live on one named volume, mounted at ``/state`` everywhere (``${run}`` = ``/state/run``);
- a simulated board's console, a pty under ``lab up``, is served on TCP instead (simdut
  ``--listen``) and the serial service whose ``url`` was that pty dials it with pyserial's
  ``socket://<simulator>:<port>``;
- each service's config travels inside the compose file (``configs:`` with ``content``), so
  one generated file is the whole lab and cannot drift from the lab file.

Also ``labctl lab ready NAME...``, the services' healthcheck: exit 0 once every named
device is registered and online.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .main import broker_option, lab

STATE = "/state"
RUN = f"{STATE}/run"
CONFIG_DIR = "/etc/labctl"
CONSOLE_PORT = 7000  # simulators serve consoles on 7001, 7002, ...
DEFAULT_DASHBOARD = 8780


def _port(address: Any, default: int) -> int:
    try:
        return int(str(address).rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return default


def _map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    """``value`` (a config tree of dicts and lists) with ``fn`` applied to every string."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    return value


def _replace(value: Any, old: str, new: str) -> Any:
    """``value`` with every string equal to ``old`` replaced by ``new``."""
    return _map_strings(value, lambda s: new if s == old else s)


def _dollars(value: Any) -> Any:
    """Compose interpolates ``$``; the lab means it literally."""
    return _map_strings(value, lambda s: s.replace("$", "$$"))


def _device_names(svc: dict[str, Any]) -> list[str]:
    return [d["name"] for d in svc.get("devices") or []] or [svc.get("name") or svc["service"]]


def compose_model(lab_spec: dict[str, Any], image: str = "labctl:dev") -> dict[str, Any]:
    """The compose file as a mapping; ``lab_spec`` is the lab file with ``${run}`` expanded
    to ``/state/run`` (``load_lab(path, Path(RUN))``)."""
    import yaml

    settings = dict(lab_spec.get("broker") or {})
    bus_port = _port(settings.pop("bus", None), 5550)
    events_port = _port(settings.pop("events", None), 5551)
    dash_port = _port(settings.pop("dashboard", None), DEFAULT_DASHBOARD)
    for key in ("state", "events_public"):
        settings.pop(key, None)
    base = {
        "build": {"context": ".", "dockerfile": "Dockerfile"},
        "image": image,
        "init": True,  # reaps the processes drivers start (shell power commands)
        "restart": "unless-stopped",
        "volumes": [{"type": "volume", "source": "lab-state", "target": STATE}],
    }
    # --insecure: the bus binds the compose network (not loopback) without CURVE keys; the
    # network is private and the ports are published on the host's loopback only. A lab
    # reached across a site network runs with keys instead (docs/security.md, "Compose").
    broker_cmd = ["labctl", "broker", "run", "--insecure", "--bus", f"tcp://0.0.0.0:{bus_port}",
                  "--events", f"tcp://0.0.0.0:{events_port}", "--state", STATE,
                  "--dashboard", f"0.0.0.0:{dash_port}"]  # fmt: skip
    for key, value in settings.items():
        broker_cmd += [f"--{key.replace('_', '-')}", str(value)]
    services: dict[str, Any] = {
        "broker": {
            "command": broker_cmd,
            "environment": {
                "LABCTL_LOG_LEVEL": "info",
                "LABCTL_BROKER": f"tcp://127.0.0.1:{bus_port}",  # healthcheck, `compose exec`
            },
            "ports": [  # loopback only: the bus runs without keys (--insecure)
                f"127.0.0.1:{bus_port}:{bus_port}",
                f"127.0.0.1:{events_port}:{events_port}",
                f"127.0.0.1:{dash_port}:{dash_port}",
            ],
            "healthcheck": {
                "test": ["CMD", "labctl", "devices", "-o", "name"],
                "interval": "10s",
                "timeout": "5s",
                "retries": 3,
                "start_period": "30s",
            },  # fmt: skip
            **base,
        }
    }
    broker_env = {"LABCTL_LOG_LEVEL": "info", "LABCTL_BROKER": f"tcp://broker:{bus_port}"}

    consoles: dict[str, tuple[str, str]] = {}  # pty path -> (simulator, socket:// url)
    for i, sim in enumerate(lab_spec.get("simulators") or [], 1):
        name = sim["name"]
        argv = [str(a) for a in sim["command"]]
        if argv and argv[0] == "-m":
            argv = ["python", *argv]
        port = CONSOLE_PORT + i
        check = None
        if "--link" in argv:
            at = argv.index("--link")
            consoles[argv[at + 1]] = (name, f"socket://{name}:{port}")
            argv[at : at + 2] = ["--listen", f"0.0.0.0:{port}"]
            probe = f'import socket; socket.create_connection(("127.0.0.1", {port}), 2).close()'
            check = {"test": ["CMD", "python", "-c", probe], "interval": "10s",
                     "timeout": "5s", "retries": 3, "start_period": "10s"}  # fmt: skip
        services[name] = {"command": argv, "environment": {"LABCTL_LOG_LEVEL": "info"}}
        if check:
            services[name]["healthcheck"] = check
        services[name].update(base)

    configs: dict[str, Any] = {}
    for svc in lab_spec.get("services") or []:
        name = svc["service"]
        depends: dict[str, Any] = {"broker": {"condition": "service_healthy"}}
        cfg = {k: v for k, v in svc.items() if k != "broker"}  # LABCTL_BROKER says where
        for path, (sim, url) in consoles.items():
            replaced = _replace(cfg, path, url)
            if replaced != cfg:
                cfg = replaced
                depends[sim] = {"condition": "service_healthy"}
        target = f"{CONFIG_DIR}/{name}.yaml"
        configs[f"{name}-config"] = {"content": yaml.safe_dump(cfg, sort_keys=False, width=90)}
        services[name] = {
            "command": ["labctl", "service", "run", target],
            "environment": dict(broker_env),
            "configs": [{"source": f"{name}-config", "target": target}],
            "depends_on": depends,
            "healthcheck": {
                "test": ["CMD", "labctl", "lab", "ready", *_device_names(svc)],
                "interval": "10s",
                "timeout": "5s",
                "retries": 3,
                "start_period": "20s",
            },  # fmt: skip
            **base,
        }
    model = {"name": "labctl", "services": services, "volumes": {"lab-state": {}}}
    if configs:
        model["configs"] = configs
    return _dollars(model)  # type: ignore[no-any-return]


def _dumper() -> Any:
    """A YAML dumper: block style for multi-line strings (the service configs), flow style
    for short lists, no anchors. Built on first use: `labctl --help` must not import yaml."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    def seq(dumper: yaml.SafeDumper, value: list[Any]) -> yaml.Node:
        flow = all(isinstance(v, (str, int)) and "\n" not in str(v) for v in value)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)

    Dumper.add_representer(str, text)
    Dumper.add_representer(list, seq)
    return Dumper


HEADER = """\
# The lab in containers, generated by `labctl lab compose{source}` from the lab file that
# `labctl lab up` runs (DESIGN §11): do not edit, regenerate. One container per service and
# simulator plus the broker, one image (Dockerfile), state on the lab-state volume.
#
#   docker compose up -d --build      # dashboard: http://127.0.0.1:{dash}/
#   LABCTL_BROKER=tcp://127.0.0.1:{bus} labctl devices
#
# docs/compose.md says how to pass real serial adapters and USB devices in. The broker runs
# without CURVE keys (--insecure) on the private compose network, its ports published on
# loopback only; docs/security.md says how to run it with keys across a site network.
"""


def compose_text(lab_spec: dict[str, Any], source: str, image: str = "labctl:dev") -> str:
    model = compose_model(lab_spec, image)
    broker_cmd = model["services"]["broker"]["command"]
    header = HEADER.format(
        source=source,
        dash=broker_cmd[broker_cmd.index("--dashboard") + 1].rsplit(":", 1)[1],
        bus=broker_cmd[broker_cmd.index("--bus") + 1].rsplit(":", 1)[1],
    )
    import yaml

    body = yaml.dump(model, Dumper=_dumper(), sort_keys=False, width=100, allow_unicode=True)
    return header + body


@lab.command("compose")
@click.argument("lab_file", required=False, type=click.Path(dir_okay=False))
@click.option("--image", default="labctl:dev", show_default=True, help="Image name to build.")
def lab_compose(lab_file: str | None, image: str) -> None:
    """Print LAB.yaml (or the example lab) as a compose file: `> compose.yaml`."""
    from .lab_up import load_lab

    spec = load_lab(lab_file, Path(RUN))
    sys.stdout.write(compose_text(spec, f" {lab_file}" if lab_file else "", image))


@lab.command("ready")
@click.argument("names", nargs=-1, required=True)
@broker_option
def lab_ready(names: tuple[str, ...], broker: str | None) -> None:
    """Exit 0 if every named device is registered and online (a healthcheck), else 1."""
    from labctl.lab import Lab

    with Lab(broker, timeout=3) as client:
        online = {d["name"]: d["online"] for d in client.devices()}
    missing = [n for n in names if not online.get(n)]
    if missing:
        click.echo(f"not online: {', '.join(missing)}", err=True)
        sys.exit(1)
