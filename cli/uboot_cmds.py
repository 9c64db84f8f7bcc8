"""``labctl uboot run|env``: a board's U-Boot prompt, one command at a time."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from .commands import lease_option
from .main import broker_option, lab_from, main


@main.group()
def uboot() -> None:
    """A board's U-Boot: run commands, read and set its environment.

    DUT is a board's dut label (or a label query). Each call power-cycles the board into
    the prompt, unless --no-cycle (the board already sits there). Without --lease the
    board is leased for the call and switched off after it (U-Boot idling at its prompt
    keeps a CPU busy); hold a lease (LABCTL_LEASE) for a session of several calls.
    """


def uboot_options(fn: Any) -> Any:
    """The options every uboot command takes; they reach it as ``**board`` for ``prompt_on``."""
    for option in reversed([
        click.option("--prompt", default="=>", show_default=True, help="U-Boot's prompt."),
        click.option("--no-cycle", is_flag=True,
                     help="Attach to a board already at the prompt (no power cycle)."),
        click.option("--timeout", type=float, default=60.0, show_default=True,
                     help="Seconds to reach the prompt and for each command."),
        lease_option,
        broker_option,
    ]):  # fmt: skip
        fn = option(fn)
    return fn


@contextmanager
def prompt_on(
    dut: str,
    *,
    lease_id: str | None,
    broker: str | None,
    prompt: str,
    no_cycle: bool,
    timeout: float,
) -> Iterator[Any]:
    """The board's U-Boot, in the given lease or a temporary one (reset when released)."""
    selector = dut if ("=" in dut or "," in dut) else f"dut={dut}"
    with lab_from(broker) as lab:
        lease = lab.attach(lease_id) if lease_id else lab.lease(selector, duration="1h")
        try:
            with lease.uboot(prompt=prompt, cycle=not no_cycle, timeout=timeout) as ub:
                yield ub
        finally:
            if not lease_id:
                lease.release()  # its power off: a board left at the prompt burns a core


@uboot.command("run")
@click.argument("dut")
@click.argument("command")
@uboot_options
def uboot_run(dut: str, command: str, **board: Any) -> None:
    """Run COMMAND at DUT's U-Boot prompt; print its output, exit with its status."""
    with prompt_on(dut, **board) as ub:
        status, output = ub.run_status(command)  # within --timeout, as every call
    click.echo(output, nl=False)
    sys.exit(0 if status == 0 else 1)


@uboot.command("env")
@click.argument("dut")
@click.argument("assignment", required=False, metavar="[KEY[=VALUE]]")
@click.option("--save", is_flag=True, help="Run saveenv after setting.")
@uboot_options
def uboot_env(dut: str, assignment: str | None, save: bool, **board: Any) -> None:
    """Print the environment, KEY's value, or set KEY=VALUE (KEY= deletes it)."""
    with prompt_on(dut, **board) as ub:
        if assignment is None:
            for key, value in ub.printenv().items():
                click.echo(f"{key}={value}")
            return
        key, eq, value = assignment.partition("=")
        if not eq:
            found = ub.getenv(key)
            if found is None:
                click.echo(f"error: {key} is not set", err=True)
                sys.exit(1)
            click.echo(found)
            return
        ub.setenv(key, value if value else None)
        if save:
            ub.run_checked("saveenv")
        click.echo(f"{key}={value}" if value else f"{key} deleted")
