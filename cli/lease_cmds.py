"""Lease commands and ``labctl shell``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import click

from .main import broker_option, lab_from, main, output_option
from .output import FORMATS, emit, when

LEASE_COLUMNS = [
    ("ref", lambda x: x["ref"]),
    ("holder", lambda x: x["holder"]),
    ("devices", lambda x: ",".join(x["devices"])),
    ("selector", lambda x: x["selector"]),
    ("ends", lambda x: when(x["end"])),
]


class _Progress:
    """Prints the queue position when it changes (the broker repeats it every heartbeat)."""

    def __init__(self) -> None:
        self.last: Any = None

    def __call__(self, body: dict[str, Any]) -> None:
        if body.get("requeued"):
            click.echo("the broker restarted: queueing again", err=True)
            self.last = None
        elif body.get("position") != self.last:
            self.last = body.get("position")
            click.echo(f"waiting in queue: position {self.last}", err=True)


@main.group()
def lease() -> None:
    """Acquire, inspect, extend and release leases."""


@lease.command("acquire")
@click.argument("selector")
@click.option("--duration", default="30m", show_default=True)
@click.option("--wait", default="0", show_default=True, help="How long to queue for a busy group.")
@click.option(
    "-o",
    "--output",
    "fmt",
    type=click.Choice([*FORMATS, "id"]),
    default="table",
    show_default=True,
    help="id: just the lease id (the credential); name: just the public ref, as elsewhere.",
)
@broker_option
def lease_acquire(selector: str, duration: str, wait: str, fmt: str, broker: str | None) -> None:
    """Lease one free group matching SELECTOR and print it (-o id: just the id).

    The id is the lease's credential: whoever has it can act on the devices, so it is
    shown only here; listings and events show the lease's public ref instead (and -o
    name prints the ref, in every lease command).

    The lease outlives this command: it lasts until `labctl lease release` or its end
    time (no keepalives needed). Use it with --lease or LABCTL_LEASE:
    export LABCTL_LEASE=$(labctl lease acquire dut=rpi4-01 -o id)
    """
    with lab_from(broker) as lab:
        held = lab.lease(
            selector, duration=duration, wait=wait, progress=_Progress(), keepalive=False
        )
        if fmt == "id":
            click.echo(held.id)
            return
        emit(held.info, fmt, [("id", lambda x: x["id"]), *LEASE_COLUMNS], "ref")
        if fmt == "table":
            click.echo(f"use it with --lease {held.id} or LABCTL_LEASE={held.id}", err=True)


@lease.command("list")
@output_option
@broker_option
def lease_list(fmt: str, broker: str | None) -> None:
    """Active leases, and requests waiting in the queue."""
    with lab_from(broker) as lab:
        out = lab.leases()
    emit(out["leases"], fmt, LEASE_COLUMNS, "ref")
    if fmt == "table" and out["queue"]:
        click.echo("\nqueued:")
        for q in out["queue"]:
            click.echo(
                f"  {q['position']}. {q['selector']}  ({q['holder']}, since {when(q['since'])})"
            )


@lease.command("show")
@click.argument("lease_id")
@output_option
@broker_option
def lease_show(lease_id: str, fmt: str, broker: str | None) -> None:
    """One lease in detail, by id or public ref."""
    with lab_from(broker) as lab:
        emit(lab.lease_info(lease_id), fmt, LEASE_COLUMNS, "ref")


@lease.command("extend")
@click.argument("lease_id")
@click.argument("duration", required=False)
@click.option("--duration", "duration_opt", default=None, help="The same as DURATION.")
@output_option
@broker_option
def lease_extend(
    lease_id: str, duration: str | None, duration_opt: str | None, fmt: str, broker: str | None
) -> None:
    """Push a lease's end time back by DURATION (e.g. 30m, 1h): lease extend ID 1h."""
    if duration and duration_opt and duration != duration_opt:
        raise click.UsageError("give DURATION once (as an argument or --duration, not both)")
    duration = duration or duration_opt
    if not duration:
        raise click.UsageError("missing DURATION: how much longer, e.g. lease extend ID 30m")
    with lab_from(broker) as lab:
        info = lab.extend_lease(lease_id, duration)
    emit(info, fmt, LEASE_COLUMNS, "ref")


@lease.command("release")
@click.argument("lease_id")
@click.option("--force", is_flag=True, help="Release someone else's lease (admin).")
@click.option("--reason", default="", help="Why; required with --force, kept in the audit journal.")
@broker_option
def lease_release(lease_id: str, force: bool, reason: str, broker: str | None) -> None:
    """Give a lease back by its id; an admin forces one by ref with --force --reason."""
    with lab_from(broker) as lab:
        lab.release_lease(lease_id, force=force, reason=reason)
    click.echo(f"released {lease_id}")


def _run_forwarding_ctrl_c(argv: list[str], env: dict[str, str]) -> int:
    """Run the command to its end. Ctrl-C reaches it (same process group) and it decides
    how to stop (pytest tears down its fixtures); we wait for it, then release."""
    import signal

    # A no-op handler, set before the child starts: a Ctrl-C right after the start must not
    # end us first. (Not SIG_IGN: the child would inherit an ignored SIGINT across exec.)
    previous = signal.signal(signal.SIGINT, lambda *_: None)
    try:
        return subprocess.Popen(argv, env=env).wait()
    finally:
        signal.signal(signal.SIGINT, previous)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("selector")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--duration", default="30m", show_default=True)
@click.option("--wait", default="0", show_default=True)
@broker_option
def shell(
    selector: str, command: tuple[str, ...], duration: str, wait: str, broker: str | None
) -> None:
    """Lease SELECTOR, run $SHELL (or COMMAND) with LABCTL_LEASE set, then release.

    Exits with COMMAND's exit code. Example: labctl shell board=rpi4 -- pytest tests/
    """
    with (
        lab_from(broker) as lab,
        lab.lease(selector, duration=duration, wait=wait, progress=_Progress()) as held,
    ):
        env = dict(os.environ, LABCTL_LEASE=held.id, LABCTL_BROKER=lab.address)
        argv = list(command) or [os.environ.get("SHELL", "/bin/sh")]
        click.echo(f"lease {held.id}: {', '.join(held.devices)}", err=True)
        started = time.monotonic()
        try:
            rc = _run_forwarding_ctrl_c(argv, env)
        except FileNotFoundError:
            click.echo(f"error: command not found: {argv[0]}", err=True)
            rc = 127
        click.echo(f"released {held.id} after {time.monotonic() - started:.1f}s", err=True)
    sys.exit(rc)
