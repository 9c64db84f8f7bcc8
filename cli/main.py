"""The ``labctl`` command. Everything heavy is imported inside the command that needs it,
so ``labctl --help`` and one-shot calls start fast (tests/test_cli_ux.py times it)."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from .output import FORMATS

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
output_option = click.option(
    "-o", "--output", "fmt", type=click.Choice(FORMATS), default="table", show_default=True
)
broker_option = click.option(
    "--broker", envvar="LABCTL_BROKER", help="Broker bus address [env LABCTL_BROKER]."
)


class LabGroup(click.Group):
    """Turns labctl errors into one clear line and a meaningful exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        from labctl.errors import LabError

        try:
            return super().invoke(ctx)
        except LabError as err:
            click.echo(f"error: {err.message}", err=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            sys.exit(130)

    # Each kind's CLI group (``CLI = "module:group"`` in services/<kind>/__init__.py) is
    # imported when it is used or listed, so a new kind adds no line here.
    def list_commands(self, ctx: click.Context) -> list[str]:
        if self is not main:
            return super().list_commands(ctx)
        from labctl.kinds import cli_targets

        return sorted({*self.commands, *cli_targets()})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if self is main and name not in self.commands:
            from labctl.kinds import cli_targets, load

            target = cli_targets().get(name)
            if target is not None:
                command = load(target)  # the module registers the group on main itself
                self.commands.setdefault(name, command)
        return super().get_command(ctx, name)


#: `labctl --help`'s epilog; docs/cli.md has the same table (a test keeps them equal)
EXIT_CODES = """\b
Exit codes:
  0    success
  1    internal error (a bug: please report it)
  2    bad usage, arguments, selector, address or config file
  3    no such device or method; nothing matches the selector
  4    device offline or its service gone (serial expect: the console closed)
  5    timeout: the broker did not answer, a wait or an expect ran out
  6    the driver failed (the hardware said no; NotSupported)
  7    lease needed, the device is leased by someone else, the lease ended, or not allowed
  130  interrupted (Ctrl-C)
labctl shell exits with its command's code. Docs: docs/cli.md, docs/selectors.md,
docs/lab-files.md."""


@click.group(cls=LabGroup, context_settings=CONTEXT, epilog=EXIT_CODES)
@click.version_option(package_name="labctl")
def main() -> None:
    """labctl: run a hardware test lab over a ZeroMQ bus.

    Address devices by label queries (board=rpi4,site=lab1; docs/selectors.md), lease
    them, drive them. LABCTL_BROKER (or --broker) is the broker address: tcp://HOST:PORT,
    HOST:PORT or ipc://PATH.
    """


def lab_from(broker: str | None) -> Any:
    from labctl.lab import Lab

    return Lab(broker)


# -- processes ------------------------------------------------------------------------------
@main.group()
def broker() -> None:
    """Run the broker."""


@broker.command("run")
@click.option(
    "--bus", default="tcp://127.0.0.1:5550", show_default=True, help="ROUTER address for the bus."
)
@click.option(
    "--events", default="tcp://127.0.0.1:5551", show_default=True, help="XPUB address for events."
)
@click.option(
    "--events-public", default=None, help="Events address to tell peers, if not --events."
)
@click.option(
    "--state",
    default=None,
    help="State directory (leases, journal) [default: $XDG_STATE_HOME/labctl].",
)
@click.option(
    "--heartbeat", type=float, default=2.0, show_default=True, help="Heartbeat interval, seconds."
)
@click.option(
    "--lease-grace", default="60s", show_default=True, help="Keepalive silence before a lease ends."
)
@click.option(
    "--group-label", default="dut", show_default=True, help="Label that groups devices of one DUT."
)
@click.option(
    "--dashboard",
    default=None,
    metavar="HOST:PORT",
    help="Serve the read-only dashboard there (e.g. 127.0.0.1:8780; docs/dashboard.md) "
    "[default: off].",
)
@click.option(
    "--forget-offline-after",
    default=None,
    metavar="DURATION",
    help="Forget devices whose service has been gone this long (e.g. 7d) [default: never].",
)
@click.option(
    "--curve",
    is_flag=True,
    help="CURVE keys even on loopback (always on for a bind beyond loopback; docs/security.md).",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Bind beyond loopback WITHOUT keys: anyone who reaches the ports drives the lab.",
)
@click.option(
    "--authorized-keys",
    default=None,
    metavar="PATH",
    help="Who may connect (YAML) [default: STATE/authorized_keys.yaml].",
)
@click.option("--services-key", default=None, hidden=True)  # lab up's own services (CURVE):
@click.option("--services-devices", default="", hidden=True)  # their key, their names (a,b)
def broker_run(
    bus: str,
    events: str,
    events_public: str | None,
    state: str | None,
    heartbeat: float,
    lease_grace: str,
    group_label: str,
    dashboard: str | None,
    forget_offline_after: str | None,
    curve: bool,
    insecure: bool,
    authorized_keys: str | None,
    services_key: str | None,
    services_devices: str,
) -> None:
    """Run the broker in the foreground.

    CURVE is on for any bus or events address beyond loopback: the broker's key pair is
    STATE/broker.key (made on first start; `labctl keys show STATE/broker.key` prints it)
    and --authorized-keys lists who may connect (docs/security.md)."""
    from pathlib import Path

    from labctl import logs
    from labctl.broker.server import BrokerSettings, run_broker
    from labctl.client import normalize_address
    from labctl.durations import parse_duration

    logs.setup("broker")
    settings = BrokerSettings(
        bus=normalize_address(bus, "--bus address"),
        events=normalize_address(events, "--events address"),
        events_public=events_public,
        state=Path(state) if state else default_state_dir(),
        heartbeat=heartbeat,
        lease_grace=parse_duration(lease_grace),
        group_label=group_label,
        dashboard=dashboard_address(dashboard, "--dashboard") if dashboard else None,
        forget_offline_after=(
            parse_duration(forget_offline_after) if forget_offline_after else None
        ),
        curve=curve,
        insecure=insecure,
        authorized_keys=Path(authorized_keys) if authorized_keys else None,
        services_key=Path(services_key) if services_key else None,
        services_devices=tuple(n for n in services_devices.split(",") if n),
    )
    run_until_signal(run_broker, settings)


def dashboard_address(value: str, what: str) -> str | None:
    """``HOST:PORT``, ``:PORT`` or ``PORT`` as given; None for ``off``; else a one-line error."""
    from labctl.errors import ConfigError

    value = value.strip()
    if value.lower() in ("off", "none", "false", "no", ""):
        return None
    host, _, port = value.rpartition(":")
    if not port.isdigit() or int(port) > 65535 or (":" in host and not host.startswith("[")):
        raise ConfigError(f"invalid {what} {value!r}: write HOST:PORT, :PORT, PORT or off")
    return value


def default_state_dir() -> Any:
    from pathlib import Path

    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "labctl"


def run_until_signal(fn: Any, *args: Any) -> None:
    from labctl.process import run_until_signal as run

    run(fn, *args)


@main.group()
def service() -> None:
    """Run device services."""


@service.command("run")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option(
    "--broker", "broker_addr", default=None, help="Override the broker address in the config."
)
def service_run(config: str, broker_addr: str | None) -> None:
    """Run one service process from CONFIG.yaml (the shape: docs/lab-files.md, services)."""
    # The same process becomes `python -m labctl.services` (same pid, signals and output):
    # the service runs without click and the CLI's modules, ~2 MB less resident per service.
    argv = [sys.executable, "-m", "labctl.services", config]
    if broker_addr:
        argv += ["--broker", broker_addr]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


@main.group(invoke_without_command=False)
def lab() -> None:
    """Run a whole lab on this machine."""


@lab.command("up")
@click.argument("lab_file", required=False, type=click.Path(dir_okay=False))
@click.option("--state", default=None, help="Broker state directory.")
@click.option("--bus", default=None, help="Override the lab's bus address.")
@click.option("--events", default=None, help="Override the lab's events address.")
@click.option(
    "--dashboard",
    default=None,
    metavar="HOST:PORT",
    help="Where the broker serves the dashboard [default: the lab's broker.dashboard, "
    "else 127.0.0.1:8780]; 'off' serves none.",
)
@click.option(
    "--example",
    default="simdut",
    show_default=True,
    help="Without LAB_FILE: which example lab (simdut, or qemu: two QEMU boards).",
)
def lab_up(
    lab_file: str | None,
    state: str | None,
    bus: str | None,
    events: str | None,
    dashboard: str | None,
    example: str,
) -> None:
    """Start the broker and every service of LAB.yaml (or the simulated example lab)."""
    from labctl import logs
    from labctl.cli.lab_output import prefix_own_logs
    from labctl.cli.lab_up import load_lab, run_lab, state_dir_for

    logs.setup("lab")
    prefix_own_logs()
    state_dir = state_dir_for(lab_file, state)
    # a bad file fails here, before anything starts
    lab_spec = load_lab(lab_file, state_dir / "run", example)
    broker_settings = lab_spec.setdefault("broker", {})
    for key, value in (("bus", bus), ("events", events), ("dashboard", dashboard)):
        if value:
            broker_settings[key] = value
    from labctl.client import normalize_address

    for key in ("bus", "events"):  # HOST:PORT is tcp, as everywhere; other forms: one line
        if key in broker_settings:
            broker_settings[key] = normalize_address(str(broker_settings[key]), f"{key} address")
    broker_settings.setdefault("dashboard", "127.0.0.1:8780")
    listen = dashboard_address(str(broker_settings["dashboard"]), "dashboard address")
    if listen is None:
        del broker_settings["dashboard"]
    else:
        broker_settings["dashboard"] = listen
    run_until_signal(run_lab, lab_spec, state_dir)


@lab.command("example")
@click.argument("name", default="simdut")
def lab_example(name: str) -> None:
    """Print an example lab file: simdut (what `lab up` runs without a file) or qemu."""
    from labctl.cli.lab_up import example_lab_text

    click.echo(example_lab_text(name), nl=False)


from . import commands as _commands  # noqa: E402,F401  (registers the client commands)
from . import keys_cmds as _keys_cmds  # noqa: E402,F401
from . import lab_compose as _lab_compose  # noqa: E402,F401
from . import sim_cmds as _sim_cmds  # noqa: E402,F401
from . import uboot_cmds as _uboot_cmds  # noqa: E402,F401
