"""``labctl lab up``: the broker plus one supervised process per service, on one machine.

Each service runs as its own OS process, forked from one warmed fork server (so the
imports are paid once and shared), restarted with exponential backoff when it dies;
SIGINT/SIGTERM stops everything, services first.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import structlog
import trio
import yaml

from labctl.errors import ConfigError
from labctl.services import child_process
from labctl.services.config import ServiceConfig, load_yaml, parse_service_config
from labctl.services.forkserver import ForkServerClient

from .lab_output import QUICK_EXIT, FailureWatch, ProcessOutput, service_output
from .main import default_state_dir

log = structlog.get_logger("lab")


#: where the simulated example lab is described (package data of labctl.services.simulators)
EXAMPLE_LAB = ("labctl.services.simulators", "example_lab.yaml")
#: the example labs by name (`lab up --example NAME`); the first is the default
EXAMPLES = {"simdut": "example_lab.yaml", "qemu": "example_lab_qemu.yaml"}


def example_lab_text(example: str = "simdut") -> str:
    """The example lab file as shipped: what ``labctl lab example [NAME]`` prints."""
    from importlib.resources import files

    if example not in EXAMPLES:
        raise ConfigError(f"no example lab {example!r} (examples: {', '.join(EXAMPLES)})")
    return files(EXAMPLE_LAB[0]).joinpath(EXAMPLES[example]).read_text()


def expand_run(value: Any, run: Path) -> Any:
    """``value`` with ``${run}`` in every string replaced by the lab's run directory."""
    if isinstance(value, str):
        return value.replace("${run}", str(run))
    if isinstance(value, list):
        return [expand_run(v, run) for v in value]
    if isinstance(value, dict):
        return {k: expand_run(v, run) for k, v in value.items()}
    return value


def load_lab(path: str | None, run: Path, example: str = "simdut") -> dict[str, Any]:
    """The lab file at ``path`` (the example lab when None), checked whole before anything
    starts: the broker section, every service with its driver's config, every simulator's
    command. A mistake names the user's file, the entry (``services[2] (pduC)``) and the field.
    """
    from labctl.services.config import (
        BrokerSection,
        SimulatorEntry,
        check_driver_config,
        parse_model,
    )

    source = path or f"<example lab {example}>"
    data = yaml.safe_load(example_lab_text(example)) if path is None else load_yaml(Path(path))
    data = expand_run(data, run)
    if not isinstance(data, dict) or not isinstance(data.get("services", []), list):
        raise ConfigError(f"{source}: a lab file is a mapping with 'broker' and 'services'")
    unknown = set(data) - {"broker", "services", "simulators"}
    if unknown:
        raise ConfigError(f"{source}: unknown top-level field(s): {', '.join(sorted(unknown))}")
    if data.get("broker") is not None:
        parse_model(BrokerSection, data["broker"], f"{source}: broker")
    if not isinstance(data.get("simulators", []), list):
        raise ConfigError(f"{source}: simulators: must be a list")
    for i, sim in enumerate(data.get("simulators", [])):
        name = f" ({sim['name']})" if isinstance(sim, dict) and "name" in sim else ""
        entry = parse_model(SimulatorEntry, sim, f"{source}: simulators[{i}]{name}")
        program = entry.command[0]
        if program != "-m" and shutil.which(program) is None:
            raise ConfigError(f"{source}: simulators[{i}]{name}: command not found: {program}")
    names: set[str] = set()
    for i, svc in enumerate(data.get("services", [])):
        name = f" ({svc['service']})" if isinstance(svc, dict) and "service" in svc else ""
        where = f"{source}: services[{i}]{name}"
        cfg = parse_service_config(svc, where)
        if cfg.service in names:
            raise ConfigError(f"{where}: service name {cfg.service!r} appears twice")
        names.add(cfg.service)
        check_driver_config(cfg, where)
    return data


def broker_argv(settings: dict[str, Any], state: str) -> list[str]:
    argv = [sys.executable, "-m", "labctl.cli", "broker", "run", "--state", state]
    for key, value in settings.items():
        if isinstance(value, bool):  # curve, insecure: flags
            argv += [f"--{key.replace('_', '-')}"] if value else []
            continue
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


async def supervise(name: str, argv: list[str], env: dict[str, str]) -> None:
    """Run ``argv`` forever: restart with backoff (0.5 s doubling to 30 s) when it exits; its
    output prefixed with ``name``; reported when it keeps failing."""
    backoff = 0.5
    output = ProcessOutput(name)
    watch = FailureWatch(output)
    while True:
        started = trio.current_time()
        # if `lab up` is killed (even with -9), so is the child (see child_process)
        child = child_process.spawn(
            argv, signal.SIGTERM, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        proc = child.popen
        assert proc.stdout is not None
        out = trio.lowlevel.FdStream(os.dup(proc.stdout.fileno()))
        proc.stdout.close()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(output.pump, out)
                rc = await child.wait()
                # the rest of its output; a child of its own may hold the pipe open
                nursery.cancel_scope.deadline = trio.current_time() + 1
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                with trio.move_on_after(5) as scope:
                    scope.shield = True
                    await child.wait()
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        ran = trio.current_time() - started
        if ran > QUICK_EXIT:
            backoff = 0.5
        watch.exited(rc, ran)
        log.warning("process exited; restarting", process=name, rc=rc, backoff=backoff)
        await trio.sleep(backoff)
        backoff = min(backoff * 2, 30.0)


async def supervise_forked(
    cfg: ServiceConfig,
    config: str,
    forks: ForkServerClient,
    log_fifo: str,
    output: ProcessOutput,
    bus: str,
    keys: Any = None,
) -> None:
    """Like ``supervise``, for a service forked from the warmed fork server (see forkserver).
    While one that keeps failing waits for its next start, a stand-in registers its devices
    offline with the reason (lab_standin)."""
    from .lab_standin import stand_in

    name = cfg.service
    backoff = 0.5
    watch = FailureWatch(output)
    while True:
        started = trio.current_time()
        try:
            pid = await forks.spawn(name, config, log_fifo)
        except ChildProcessError as exc:
            rc: int | None = None
            log.warning("could not start service", process=name, error=str(exc))
        else:
            try:
                rc = await forks.wait(pid)
            finally:
                await forks.stop(pid)
        ran = trio.current_time() - started
        if ran > QUICK_EXIT:
            backoff = 0.5
        watch.exited(rc, ran)
        log.warning("process exited; restarting", process=name, rc=rc, backoff=backoff)
        restart = trio.current_time() + backoff
        if watch.failing:
            with trio.move_on_at(restart):
                why = f"its service {name} keeps failing: {output.last_words()}"
                await stand_in(cfg, bus, why, keys)
        await trio.sleep_until(restart)
        backoff = min(backoff * 2, 30.0)


def state_dir_for(path: str | None, state: str | None) -> Path:
    """--state, else the lab file's broker.state, else $XDG_STATE_HOME/labctl."""
    if state:
        return Path(state)
    if path is not None:
        data = load_yaml(Path(path))
        if (
            isinstance(data, dict)
            and isinstance(data.get("broker"), dict)
            and data["broker"].get("state")
        ):
            return Path(data["broker"]["state"])
    return Path(default_state_dir())


def check_addresses_free(broker: dict[str, Any]) -> None:
    """Refuse to start when another lab holds our TCP addresses, before anything starts.

    Otherwise our broker would fail to bind while our services registered with the other
    lab's broker. (ipc:// is not checked: binding an ipc path takes it over.)
    """
    import socket

    wanted = [("bus", broker.get("bus", "tcp://127.0.0.1:5550")),
              ("events", broker.get("events", "tcp://127.0.0.1:5551"))]  # fmt: skip
    if broker.get("dashboard"):
        wanted.append(("dashboard", f"tcp://{broker['dashboard']}"))
    for what, address in wanted:
        if not str(address).startswith("tcp://"):
            continue
        host, _, port = str(address)[len("tcp://") :].rpartition(":")
        host = host.strip("[]")
        if host in ("*", ""):
            host = "0.0.0.0"
        if not port.isdigit() or int(port) == 0:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, int(port)))
            except OSError as exc:
                reason = "is in use (another lab?)" if exc.errno == errno.EADDRINUSE else (
                    f"cannot be bound: {exc.strerror}")  # fmt: skip
                raise ConfigError(f"{what} address {address} {reason}") from None


LAB_SERVICES_KEY = "lab-services"  # the key pair of lab up's own services, in the state dir


def lab_runs_open(broker: dict[str, Any]) -> bool:
    """True if the lab's broker runs without CURVE (loopback, or ``insecure``)."""
    from labctl.broker.auth import is_loopback

    if broker.get("insecure"):
        return True
    bus = str(broker.get("bus", "tcp://127.0.0.1:5550"))
    events = str(broker.get("events", "tcp://127.0.0.1:5551"))
    return not broker.get("curve") and is_loopback(bus) and is_loopback(events)


def lab_keys(broker: dict[str, Any], state_dir: Path, names: list[str]) -> dict[str, str]:
    """A lab whose broker runs CURVE: its services get a key of their own, kept in the
    state directory and authorized by the broker as role service for the lab's device
    ``names`` (``--services-key``); the broker's key pair is made here first, so they know
    it. The environment they get."""
    from labctl import keys

    state_dir.mkdir(parents=True, exist_ok=True)
    for name in ("broker", LAB_SERVICES_KEY):
        if not (state_dir / f"{name}.key_secret").exists():
            keys.generate(name, state_dir)
    broker["services_key"] = str(state_dir / f"{LAB_SERVICES_KEY}.key")
    broker["services_devices"] = ",".join(names)
    authorized = broker.get("authorized_keys") or state_dir / "authorized_keys.yaml"
    log.info(
        "CURVE on: people need their keys in authorized_keys (docs/security.md)",
        broker_key=str(state_dir / "broker.key"),
        authorized_keys=str(authorized),
    )
    return {
        keys.KEY_ENV: str(state_dir / f"{LAB_SERVICES_KEY}.key_secret"),
        keys.BROKER_KEY_ENV: str(state_dir / "broker.key"),
    }


async def run_lab(lab: dict[str, Any], state_dir: Path) -> None:
    broker = dict(lab.get("broker") or {})
    check_addresses_free(broker)
    bus = broker.get("bus", "tcp://127.0.0.1:5550")
    broker.pop("state", None)
    (state_dir / "run").mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ, LABCTL_BROKER=bus.replace("*", "127.0.0.1").replace("0.0.0.0", "127.0.0.1")
    )
    from labctl import keys

    stand_in_keys = None  # a stand-in registers a failing service's devices: with its key
    if lab_runs_open(broker):  # the lab's own processes dial its open broker, whatever the
        env.pop(keys.BROKER_KEY_ENV, None)  # shell says for another lab (docs/security.md)
    else:
        names = [
            entry.name
            for svc in lab.get("services", [])
            for entry in parse_service_config(svc, svc["service"]).device_entries()
        ]
        env.update(lab_keys(broker, state_dir, names))
        stand_in_keys = keys.client_keys(env[keys.BROKER_KEY_ENV], env[keys.KEY_ENV])
    with tempfile.TemporaryDirectory(prefix="labctl-lab-") as tmp:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(supervise, "broker", broker_argv(broker, str(state_dir)), env)
            for sim in lab.get("simulators", []):
                argv = [str(a) for a in sim["command"]]
                if argv and argv[0] == "-m":  # a Python module: run it with this interpreter
                    argv = [sys.executable, *argv]
                nursery.start_soon(supervise, sim["name"], argv, env)
            # Services are forked from one warmed parent: the imports are paid once and
            # shared copy-on-write (about 7 MB of unique memory per service; bench/memory.py).
            services = lab.get("services", [])
            drivers = sorted({f"{svc['kind']}:{svc['driver']}" for svc in services})
            forks = ForkServerClient(drivers, env)
            if services:
                nursery.start_soon(forks.run)
            for svc in services:
                cfg_path = Path(tmp) / f"{svc['service']}.yaml"
                cfg_path.write_text(yaml.safe_dump(svc))
                output = ProcessOutput(svc["service"])
                fifo, stream = service_output(svc["service"], Path(tmp))
                nursery.start_soon(output.pump, stream)
                cfg = parse_service_config(svc, svc["service"])
                nursery.start_soon(
                    supervise_forked, cfg, str(cfg_path), forks, fifo, output, env["LABCTL_BROKER"],
                    stand_in_keys,
                )  # fmt: skip
            log.info(
                "lab up", broker=bus, services=len(lab.get("services", [])), state=str(state_dir)
            )
            if broker.get("dashboard"):
                from labctl.broker.dashboard import bind_address

                print(f"dashboard: http://{bind_address(str(broker['dashboard']))}/", flush=True)
