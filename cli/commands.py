"""Client commands: devices, device, call, power, events."""

from __future__ import annotations

import json
from typing import Any

import click

from .main import broker_option, lab_from, main, output_option
from .output import FORMATS, emit, labels_text, status_text, when

DEVICE_COLUMNS = [
    ("name", lambda d: d["name"]),
    ("kind", lambda d: d["kind"]),
    ("driver", lambda d: d["driver"]),
    ("online", lambda d: "yes" if d["online"] else _offline(d)),
    ("health", lambda d: d["health"]),
    ("lease", lambda d: d["lease"] or "-"),
    ("holder", lambda d: d["holder"] or "-"),
    ("status", lambda d: status_text(d["status"])),
    ("labels", lambda d: labels_text(d["labels"])),
]


def _offline(device: dict[str, Any]) -> str:
    reason = device.get("offline_reason")
    return f"no: {reason}" if reason else "no"


@main.command()
@click.option("-l", "--selector", default="", help="Label query, e.g. board=rpi4,site=lab1.")
@click.option(
    "-o",
    "--output",
    "fmt",
    type=click.Choice([*FORMATS, "wide"]),
    default="table",
    show_default=True,
    help="table fits the terminal (truncating holder, status, driver, labels, why offline); "
    "wide shows all.",
)
@broker_option
def devices(selector: str, fmt: str, broker: str | None) -> None:
    """List devices, optionally those matching a label query (docs/selectors.md)."""
    with lab_from(broker) as lab:
        found = sorted(lab.devices(selector), key=lambda d: d["name"])
    emit(found, fmt, DEVICE_COLUMNS, shrink=("holder", "status", "driver", "labels", "online"))


@main.group()
def device() -> None:
    """Inspect or administer one device."""


@device.command("show")
@click.argument("name")
@output_option
@broker_option
def device_show(name: str, fmt: str, broker: str | None) -> None:
    """Show one device: labels, status, lease and its methods."""
    with lab_from(broker) as lab:
        info = lab.device(name).info
    if fmt != "table":
        emit(info, fmt, [], "name")
        return
    click.echo(f"name:    {info['name']}\nkind:    {info['kind']} ({info['driver']})")
    click.echo(
        f"service: {info['service']}\nonline:  {'yes' if info['online'] else 'no ' + info['offline_reason']}"
    )
    click.echo(f"health:  {info['health']} {info['health_reason']}".rstrip())
    click.echo(f"lease:   {info['lease'] or '-'} {info['holder'] or ''}".rstrip())
    click.echo(f"status:  {status_text(info['status'])}\nlabels:  {labels_text(info['labels'])}")
    click.echo("methods:")
    for mname, spec in sorted(info["interface"].get("methods", {}).items()):
        args = ", ".join(
            a["name"] + (f"={a['default']!r}" if "default" in a else "") for a in spec["args"]
        )
        flag = " [needs lease]" if spec["mutating"] else ""
        click.echo(f"  {mname}({args}){flag}  {spec.get('doc', '')}".rstrip())
    for sname, spec in sorted(info["interface"].get("streams", {}).items()):
        click.echo(f"stream:  {sname}{' (writable with lease)' if spec.get('writable') else ''}")


@device.command("maintenance")
@click.argument("name")
@click.argument("state", type=click.Choice(["on", "off"]))
@click.option("--reason", default="", help="Why (kept in the audit journal).")
@broker_option
def device_maintenance(name: str, state: str, reason: str, broker: str | None) -> None:
    """Take a device out of allocation (on) or put it back (off)."""
    health = "maintenance" if state == "on" else "good"
    with lab_from(broker) as lab:
        lab.set_health(name, health, reason)
    click.echo(f"{name}: {health}")


@device.command("remove")
@click.argument("name")
@broker_option
def device_remove(name: str, broker: str | None) -> None:
    """Forget a device whose service is gone (stopped or renamed); refused while its service
    is connected or a lease holds it. Journaled in the audit with who removed it."""
    with lab_from(broker) as lab:
        lab.remove_device(name)
    click.echo(f"{name}: removed")


def parse_value(text: str) -> Any:
    """CLI arguments: JSON where it parses (numbers, true, lists), else the plain string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def split_args(raw: tuple[str, ...]) -> tuple[list[Any], dict[str, Any]]:
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for item in raw:
        key, eq, value = item.partition("=")
        if eq and key.isidentifier():
            kwargs[key] = parse_value(value)
        else:
            args.append(parse_value(item))
    return args, kwargs


def one_shot(
    lab: Any,
    name: str,
    lease_id: str | None,
    method: str,
    args: list[Any],
    kwargs: dict[str, Any],
    force: str | None = None,
) -> Any:
    """``Lab.one_shot``: a mutating call without a lease leases just that device (not its
    DUT group) for the call. When that lease cannot be had, the error names the device and
    why, not the ``name=...`` selector the user never wrote. ``force``: the reason to
    operate a device in maintenance (journaled)."""
    from labctl.errors import DeviceBusy, DeviceOffline

    try:
        return lab.one_shot(name, method, *args, lease=lease_id, force=force, **kwargs)
    except (DeviceBusy, DeviceOffline) as err:
        if err.details.get("selector") != f"name={name}":
            raise
        if isinstance(err, DeviceOffline):  # "'name=D' matches only offline devices (D: why)"
            why = err.message.partition(" matches only offline devices (")[2].removesuffix(")")
            why = why.removeprefix(f"{name}: ") or "no reason given"
            raise DeviceOffline(f"{name!r} is offline: {why}", err.details) from None
        reasons = "; ".join(err.details.get("reasons") or []) or err.message
        raise type(err)(
            f"cannot lease {name!r} for this {method} (a one-shot command leases just the "
            f"device it acts on): {reasons}",
            err.details,
        ) from None


def show_result(result: Any) -> None:
    if result is None:
        return
    if isinstance(result, (dict, list)):
        click.echo(json.dumps(result, indent=2, default=str))
    elif isinstance(result, bytes):
        click.echo(result.decode("utf-8", "replace"), nl=False)
    else:
        click.echo(result)


lease_option = click.option(
    "--lease",
    "lease_id",
    envvar="LABCTL_LEASE",
    default=None,
    help="Lease id to use [env LABCTL_LEASE].",
)


def force_options(fn: Any) -> Any:
    """``--force --reason TEXT``: operate a device in maintenance (journaled; with CurveZMQ
    on, admin keys only)."""
    fn = click.option("--reason", default="", help="Why --force (kept in the audit journal).")(fn)
    return click.option(
        "--force",
        is_flag=True,
        help="Operate a device in maintenance without a lease (needs --reason; journaled).",
    )(fn)


def forced(force: bool, reason: str) -> str | None:
    """The ``force`` reason to send, or None; --force without --reason is a usage error."""
    if not force:
        return None
    if not reason:
        raise click.UsageError("--force needs --reason TEXT (kept in the audit journal)")
    return reason


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("device_name")
@click.argument("method")
@click.argument("args", nargs=-1)
@lease_option
@click.option("--timeout", type=float, default=None, help="Seconds to wait for the reply.")
@force_options
@broker_option
def call(
    device_name: str,
    method: str,
    args: tuple[str, ...],
    lease_id: str | None,
    timeout: float | None,
    force: bool,
    reason: str,
    broker: str | None,
) -> None:
    """Call any METHOD of DEVICE; ARGs are values or key=value (JSON where it parses)."""
    pos, kw = split_args(args)
    why = forced(force, reason)
    with lab_from(broker) as lab:
        if timeout is not None:
            lab.timeout = timeout
        show_result(one_shot(lab, device_name, lease_id, method, pos, kw, why))


@main.command()
@click.argument("action", type=click.Choice(["on", "off", "cycle", "state", "read"]))
@click.argument("device_name")
@click.option("--wait", type=float, default=None, help="For cycle: seconds off.")
@lease_option
@force_options
@broker_option
def power(
    action: str,
    device_name: str,
    wait: float | None,
    lease_id: str | None,
    force: bool,
    reason: str,
    broker: str | None,
) -> None:
    """Switch or read a power device: on, off, cycle, state (prints on/off), read."""
    kwargs = {"wait": wait} if action == "cycle" and wait is not None else {}
    why = forced(force, reason)
    with lab_from(broker) as lab:
        if action == "cycle":
            lab.timeout += wait or 2.0
        show_result(one_shot(lab, device_name, lease_id, action, [], kwargs, why))


@main.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events.")
@click.option("--topic", default="*", show_default=True, help="Topic glob, e.g. 'device.*.status'.")
@click.option(
    "--since",
    default=None,
    help="Show the journal from this long ago (1h) or this time (2026-12-01T08:00) "
    "[default: 1h; with -f: none].",
)
@output_option
@broker_option
def events(follow: bool, topic: str, since: str | None, fmt: str, broker: str | None) -> None:
    """Print events from the journal and, with -f, as they happen.

    -o json prints one array (with -f: one JSON object per line), -o yaml a list (with
    -f: one document per event), -o name one topic per line.
    """
    from .output import seconds_since

    since_s = seconds_since(since) if since else (None if follow else 3600.0)
    with lab_from(broker) as lab:
        if not follow:
            _print_events(lab.history(since_s, topic), fmt, lines=False)
            return
        with lab.event_stream(topic) as stream:  # live once this returns
            click.echo(f"following {topic} (Ctrl-C to stop)", err=True)
            if since_s is not None:
                _print_events(stream.history(since_s), fmt)
            while True:
                _print_events([stream.next_event()], fmt)


def _print_events(rows: list[dict[str, Any]], fmt: str, lines: bool = True) -> None:
    """``rows`` in ``fmt``; ``lines``: a stream (JSON lines, YAML documents), else one listing."""
    if fmt in ("json", "yaml") and not lines:
        emit(rows, fmt, [])
    elif fmt == "json":
        for ev in rows:
            click.echo(json.dumps(ev, default=str))
    elif fmt == "yaml":
        for ev in rows:
            click.echo("---")
            emit(ev, fmt, [])
    elif fmt == "name":
        for ev in rows:
            click.echo(ev["topic"])
    else:
        for ev in rows:
            click.echo(
                f"{when(ev['ts'])}  #{ev['seq']:<6} {ev['topic']}  {json.dumps(ev['body'], default=str)}"
            )
    sys_flush()


def sys_flush() -> None:
    import sys

    sys.stdout.flush()


from . import lease_cmds as _lease_cmds  # noqa: E402,F401
from . import serial_cmds as _serial_cmds  # noqa: E402,F401
