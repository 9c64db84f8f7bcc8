"""``labctl serial``: an interactive console, the scrollback log, send and expect."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Any

import click

from .commands import force_options, forced, lease_option
from .main import broker_option, lab_from, main

ESCAPE = b"\x1d"  # Ctrl-]
HELP = "\r\n[labctl] Ctrl-] then: q quit, b send break, p power-cycle this DUT, ? help\r\n"


@main.group()
def serial() -> None:
    """Serial consoles: interactive, log, send, expect."""


@contextmanager
def write_access(lab: Any, device: str, lease_id: str | None, need: bool = True) -> Any:
    """``Lab.write_access`` (the given lease, or a temporary one on the device's whole
    group, released without a reset), or no lease at all when only watching."""
    if lease_id is None and not need:
        yield None
        return
    with lab.write_access(device, lease_id) as held:
        yield held


@serial.command("console")
@click.argument("device_name")
@click.option(
    "--since", type=int, default=None, help="Replay the scrollback from this byte offset."
)
@click.option("--read-only", is_flag=True, help="Only watch; take no lease.")
@lease_option
@force_options
@broker_option
def console(
    device_name: str,
    since: int | None,
    read_only: bool,
    lease_id: str | None,
    force: bool,
    reason: str,
    broker: str | None,
) -> None:
    """Attach this terminal to DEVICE's console. Escape: Ctrl-] then q (quit), b (break),
    p (power-cycle the power device of the same DUT in the same lease), ? (help).

    On a device in maintenance an admin types into it with --force --reason TEXT (no
    lease; journaled; the console closes when maintenance ends); others watch."""
    from labctl.errors import DeviceBusy

    why = forced(force, reason)
    if why is not None and read_only:
        raise click.UsageError("--read-only needs no --force (anyone may watch)")
    args: dict[str, Any] = {} if since is None else {"since": since}
    with lab_from(broker) as lab:
        if why is None and lease_id is None and not read_only:
            read_only = _in_maintenance(lab, device_name, args)
        try:
            ctx = write_access(lab, device_name, lease_id, need=not read_only and why is None)
            held = ctx.__enter__()
        except DeviceBusy as exc:
            click.echo(f"[labctl] read-only: {exc.message}", err=True)
            ctx, held = write_access(lab, device_name, None, need=False), None
            ctx.__enter__()
        try:
            dev = lab.device(device_name, lease=held, force=why)
            stream = dev.stream("console", write=held is not None or why is not None, **args)
            click.echo(f"[labctl] connected to {device_name}; Ctrl-] ? for help", err=True)
            _interact(lab, stream, dev, held)
        finally:
            ctx.__exit__(None, None, None)


def _in_maintenance(lab: Any, device_name: str, args: dict[str, Any]) -> bool:
    """Whether a console without a lease or force must only watch: the device is in
    maintenance, which nobody can lease. The broker's refusal of a write, which tells the
    reason and how to force, is printed; False if it let the write through (maintenance
    has just ended: lease as usual)."""
    from labctl.errors import InMaintenance, LabError

    dev = lab.device(device_name)
    if dev.info.get("health") != "maintenance":
        return False
    try:
        dev.stream("console", write=True, resume=0, **args).close()
    except InMaintenance as exc:
        click.echo(f"[labctl] read-only: {exc.message}", err=True)
        return True
    except LabError:  # lease-required: maintenance ended meanwhile
        return False
    return False


def _interact(lab: Any, stream: Any, dev: Any, held: Any) -> None:
    import termios
    import tty

    fd = sys.stdin.fileno()
    is_tty = os.isatty(fd)
    saved = termios.tcgetattr(fd) if is_tty else None
    if is_tty:
        tty.setraw(fd)
    escaped = False
    told = 0  # service restarts reported
    try:
        while True:
            ready = stream.wait([fd], 1.0)
            try:
                while True:
                    data = stream.read_some(0)
                    if not data:
                        _say(f"[labctl] console closed: {stream.closed_reason}")
                        return
                    told = _say_restarts(stream, told)
                    os.write(sys.stdout.fileno(), data)
            except TimeoutError:
                pass
            if fd not in ready:
                continue
            keys = os.read(fd, 1024)
            if not keys:
                return
            out = bytearray()
            for b in keys:
                ch = bytes([b])
                if escaped:
                    escaped = False
                    if ch == b"q":
                        _say("[labctl] bye")
                        return
                    if not _command(ch, lab, dev, held):
                        out += ch if ch != ESCAPE else ESCAPE
                elif ch == ESCAPE:
                    escaped = True
                else:
                    out += ch
            if out:
                if stream.writable:
                    stream.write(bytes(out))
                else:
                    _say("[labctl] read-only console (no lease): input ignored")
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        stream.close()


def _say_restarts(stream: Any, told: int) -> int:
    """Tell the user about each serial service restart under ``stream`` after the first
    ``told`` (see ``ByteStream.restarts``); returns how many have been told."""
    for event in stream.restarts[told:]:
        _say(f"[labctl] the serial service restarted: output after offset {event['at']} of "
             f"its previous run is lost, {event['lost']} bytes of the new run were "
             "overwritten; continuing from the new run's oldest byte")  # fmt: skip
    return len(stream.restarts)


def _say(text: str) -> None:
    os.write(sys.stderr.fileno(), (text + "\r\n").encode())


def _command(ch: bytes, lab: Any, dev: Any, held: Any) -> bool:
    from labctl.errors import LabError

    try:
        if ch == b"?":
            _say(HELP.strip())
        elif ch == b"b":
            dev.call("break")
            _say("[labctl] break sent")
        elif ch == b"p":
            if held is None:
                _say("[labctl] power-cycle needs a lease")
                return True
            power = [n for n, k in held.info.get("kinds", {}).items() if k == "power"]
            if len(power) != 1:
                _say(f"[labctl] no single power device in this lease ({power or 'none'})")
                return True
            _say(f"[labctl] power-cycling {power[0]}")
            held[power[0]].cycle(timeout=30)
        else:
            return False
    except LabError as exc:
        _say(f"[labctl] {exc.message}")
    return True


@serial.command("log")
@click.argument("device_name")
@click.option(
    "--since", type=int, default=None, help="Byte offset to start from (default: all kept)."
)
@click.option("--tail", type=int, default=None, help="Only the last N bytes.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output.")
@broker_option
def log(
    device_name: str, since: int | None, tail: int | None, follow: bool, broker: str | None
) -> None:
    """Print DEVICE's scrollback, optionally following it.

    Bytes have absolute offsets; the range printed goes to stderr, so `--since` can
    continue exactly where this left off."""
    out = sys.stdout.buffer
    with lab_from(broker) as lab:
        dev = lab.device(device_name)
        kwargs: dict[str, Any] = {"since": since} if since is not None else {}
        if tail is not None:
            kwargs["tail"] = tail
        first = None
        while True:
            chunk = dev.log(**kwargs)
            first = chunk["offset"] if first is None else first
            out.write(chunk["data"])
            nxt = chunk["offset"] + len(chunk["data"])
            if nxt >= chunk["end"]:
                break
            kwargs = {"since": nxt}
        out.flush()
        click.echo(f"[labctl] bytes {first}..{nxt} (more with --since {nxt})", err=True)
        if follow:
            with dev.stream("console", write=False, since=nxt) as stream:
                told = 0
                for data in stream:
                    told = _say_restarts(stream, told)
                    out.write(data)
                    out.flush()


#: ``serial expect`` (and ``send --expect``) exit codes besides 0 (matched)
EXIT_TIMEOUT = 5  # the pattern did not appear in time (the Timeout code of every command)
EXIT_CLOSED = 4  # the console stream ended first (service gone, lease ended)
EXPECT_EPILOG = (
    "Exit status: 0 matched; 5 the pattern did not appear within --timeout; 4 the console "
    "closed first; 1-3, 6 as for any command (labctl --help)."
)
LINESEPS = {"lf": "\n", "cr": "\r", "crlf": "\r\n", "none": ""}


@serial.command("send", epilog=EXPECT_EPILOG)
@click.argument("device_name")
@click.argument("text")
@click.option("--raw", is_flag=True, help="Send TEXT as is, without a line ending.")
@click.option(
    "--linesep",
    type=click.Choice(list(LINESEPS)),
    default="lf",
    show_default=True,
    help="Line ending to append: lf (\\n), cr (\\r), crlf (\\r\\n) or none.",
)
@click.option("--crlf", is_flag=True, help="Same as --linesep crlf.")
@click.option("--expect", "pattern", default=None, help="Then wait for this regex in the answer.")
@click.option("--timeout", type=float, default=60, show_default=True, help="For --expect.")
@click.option("-o", "--output", "fmt", type=click.Choice(["text", "json"]), default="text")
@lease_option
@force_options
@broker_option
def send(
    device_name: str,
    text: str,
    raw: bool,
    linesep: str,
    crlf: bool,
    pattern: str | None,
    timeout: float,
    fmt: str,
    lease_id: str | None,
    force: bool,
    reason: str,
    broker: str | None,
) -> None:
    """Type TEXT (plus a line ending) into DEVICE's console.

    The service remembers where the console's output stood at this send (until the
    lease ends with a reset), so a following `labctl serial expect DEVICE PATTERN`, in
    another process, searches the answer from there. `--expect PATTERN` does both in
    one command. A device in maintenance takes it only with --force --reason TEXT
    (journaled); `expect` and `log` only read, and need neither lease nor force."""
    from .commands import one_shot

    ending = "" if raw else LINESEPS["crlf" if crlf else linesep]
    why = forced(force, reason)
    with lab_from(broker) as lab:
        n = one_shot(lab, device_name, lease_id, "send", [text + ending], {}, why)
        if pattern is None:
            click.echo(f"sent {n} bytes", err=True)
            return
        since = lab.device(device_name).status().get("last_send")
        _expect(lab, device_name, pattern, timeout, since, fmt)


@serial.command("expect", epilog=EXPECT_EPILOG)
@click.argument("device_name")
@click.argument("pattern")
@click.option("--timeout", type=float, default=60, show_default=True)
@click.option(
    "--since",
    type=int,
    default=None,
    help="Search from this offset (default: from the last `serial send` in the current "
    "lease, else new output only).",
)
@click.option("--new", is_flag=True, help="Search only output that arrives from now on.")
@click.option(
    "-o",
    "--output",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    help="json: {offset, match, before} on stdout.",
)
@broker_option
def expect(
    device_name: str,
    pattern: str,
    timeout: float,
    since: int | None,
    new: bool,
    fmt: str,
    broker: str | None,
) -> None:
    """Wait until PATTERN (a regex) appears on DEVICE's console.

    Prints the match (text) and, on stderr, the offset just past it: pass it as `--since`
    to chain expects. Searches from the position of the last `labctl serial send` on
    this console (kept by the service until the lease ends with a reset), so
    `send D root; expect D '# '` sees an answer that came before expect started."""
    with lab_from(broker) as lab:
        if since is None and not new:
            since = lab.device(device_name).status().get("last_send")
        _expect(lab, device_name, pattern, timeout, since, fmt)


def _expect(
    lab: Any, device_name: str, pattern: str, timeout: float, since: int | None, fmt: str
) -> None:
    """Search ``device_name``'s console from ``since`` (None: new output) in bytes mode, so
    the offset printed after the match is exact; exits with EXIT_TIMEOUT/EXIT_CLOSED."""
    import json

    import pexpect

    con = lab.device(device_name).console(since=since, write=False, encoding=None)
    try:
        con.expect(pattern.encode(), timeout=timeout)
    except pexpect.TIMEOUT:
        click.echo(f"error: {pattern!r} did not appear within {timeout:g}s", err=True)
        _show_tail(con)
        sys.exit(EXIT_TIMEOUT)
    except pexpect.EOF:
        click.echo(f"error: console closed before {pattern!r} appeared", err=True)
        _show_tail(con)
        sys.exit(EXIT_CLOSED)
    finally:
        offset = con.offset
        con.close()
    match = con.after.decode(errors="replace")
    before = con.before.decode(errors="replace")
    if fmt == "json":
        click.echo(json.dumps({"offset": offset, "match": match, "before": before}))
    else:
        click.echo(match)
    if offset is not None:
        click.echo(f"[labctl] matched; next offset {offset} (continue with --since {offset})",
                   err=True)  # fmt: skip


def _show_tail(con: Any) -> None:
    before = con.before if isinstance(con.before, bytes) else b""
    if before:
        click.echo(f"[labctl] the console printed (last {min(len(before), 2048)} bytes):", err=True)
        click.echo(before[-2048:].decode(errors="replace"), err=True)
