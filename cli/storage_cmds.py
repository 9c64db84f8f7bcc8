"""``labctl storage ...``: SD muxes and image writes.

Only public SDK calls: the storage proxy's ``write``/``flash``/``dump`` and the exported
methods. Writes without ``--lease`` take a temporary lease on the device and release it
without the on-release reset, so a flashed card stays at the DUT.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from typing import Any

import click

from .commands import lease_option
from .main import broker_option, lab_from, main


@main.group()
def storage() -> None:
    """SD-card muxes: switch the card, write an image (upload or URI), read it back."""


@contextmanager
def _device(lab: Any, name: str, lease_id: str | None, need_lease: bool) -> Any:
    if lease_id is not None or not need_lease:
        yield lab.device(name, lease=lease_id)
        return
    held = lab.lease(f"name={name}", duration="12h")
    try:
        yield lab.device(name, lease=held)
    finally:
        held.release(reset=False)  # a flashed card stays where flash left it


@storage.command("state")
@click.argument("device_name")
@broker_option
def state(device_name: str, broker: str | None) -> None:
    """Print where the card is: host, dut or off."""
    with lab_from(broker) as lab:
        click.echo(lab.device(device_name).call("state"))


@storage.command("info")
@click.argument("device_name")
@click.option("-o", "--output", "fmt", type=click.Choice(["table", "json"]), default="table")
@broker_option
def info(device_name: str, fmt: str, broker: str | None) -> None:
    """Target size, block device, side and the last write."""
    with lab_from(broker) as lab:
        data = lab.device(device_name).call("info")
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, default=str))
        return
    size = data.get("size")
    click.echo(f"state:   {data['state']}" + (f"  (busy: {data['busy']})" if data["busy"] else ""))
    click.echo(
        f"device:  {data.get('device') or '-'}"
        + (f"  ({data['medium']})" if data.get("medium") else "")
    )
    click.echo(f"size:    {'-' if size is None else _mib(size)}")
    last = data.get("last_write")
    if not last:
        click.echo("last write: none")
        return
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last["time"]))
    click.echo(f"last write: {last['result']}  {last['source']}  {when}")
    if last.get("sha256"):
        click.echo(f"  sha256:  {last['sha256']}\n  bytes:   {last['bytes']}")
    if last.get("error"):
        click.echo(f"  error:   {last['error']}")


for _side, _help in (("host", "Switch the card to the host."), ("dut", "Switch the card to the DUT."),
                     ("off", "Disconnect the card from both sides.")):  # fmt: skip

    def _make(side: str) -> Any:
        @lease_option
        @broker_option
        @click.argument("device_name")
        def switch(device_name: str, lease_id: str | None, broker: str | None) -> None:
            with lab_from(broker) as lab, _device(lab, device_name, lease_id, True) as dev:
                click.echo(dev.call(side))

        return switch

    storage.command(_side, help=_help)(_make(_side))


def _write_options(fn: Any) -> Any:
    """The options ``write`` and ``flash`` share."""
    for option in reversed([
        click.option("--timeout", type=float, default=3600.0, show_default=True, help="Seconds."),
        click.option("--verify", is_flag=True, help="Read the written ranges back and compare."),
        click.option("--bmap", default="auto", show_default=True,
                     help="A .bmap file, 'none', or 'auto' (IMAGE.bmap beside the image)."),
        click.option("--sha256", default=None, help="Expected sha256 of the decompressed image."),
    ]):  # fmt: skip
        fn = option(fn)
    return fn


@storage.command("write")
@click.argument("device_name")
@click.argument("source")
@_write_options
@click.option("--switch", is_flag=True, help="Switch the card to the host first if at the DUT.")
@lease_option
@broker_option
def write(device_name: str, source: str, sha256: str | None, bmap: str, verify: bool,
          timeout: float, switch: bool, lease_id: str | None, broker: str | None) -> None:  # fmt: skip
    """Write SOURCE (a local file, or a URI the service fetches: https://, s3://, fs:///,
    NAME:path) to the card. Compression is detected from the bytes."""
    with lab_from(broker) as lab, _device(lab, device_name, lease_id, True) as dev:
        bar = ProgressLine()
        try:
            result = dev.write(source, sha256=sha256, bmap=bmap, verify=verify, switch=switch,
                               progress=bar, timeout=timeout)  # fmt: skip
        finally:
            bar.close()
    _done(device_name, result)


@storage.command("flash")
@click.argument("device_name")
@click.argument("source")
@_write_options
@lease_option
@broker_option
def flash(device_name: str, source: str, sha256: str | None, bmap: str, verify: bool,
          timeout: float, lease_id: str | None, broker: str | None) -> None:  # fmt: skip
    """Card to the host, write SOURCE (and --verify), card to the DUT: the card reaches the
    DUT only when everything succeeded."""
    with lab_from(broker) as lab, _device(lab, device_name, lease_id, True) as dev:
        bar = ProgressLine()
        try:
            result = dev.flash(source, sha256=sha256, bmap=bmap, verify=verify, progress=bar,
                               timeout=timeout)  # fmt: skip
        finally:
            bar.close()
    _done(device_name, result)


@storage.command("read")
@click.argument("device_name")
@click.argument("dest", type=click.Path(dir_okay=False, writable=True))
@click.option("--size", default=None, help="Bytes to read (e.g. 64MiB); default: the whole card.")
@broker_option
def read(device_name: str, dest: str, size: str | None, broker: str | None) -> None:
    """Copy the card (the card must be at the host) to the local file DEST."""
    n_size = None
    if size is not None:
        from labctl.bmap import parse_size

        try:
            n_size = parse_size(size)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--size") from None
    with lab_from(broker) as lab:
        n = lab.device(device_name).dump(dest, n_size)
    click.echo(f"{device_name}: {_mib(n)} -> {dest}")


def _done(name: str, r: dict[str, Any]) -> None:
    extra = " verified" if r.get("verified") else ""
    at = f", card at {r['state']}" if r.get("state") else ""
    click.echo(
        f"{name}: wrote {_mib(r['bytes'])} of {r['source']} "
        f"({'raw' if r.get('compression') == 'none' else r.get('compression')}"
        f"{', bmap' if r.get('bmap') else ''}) in {r.get('duration', 0):.1f}s, "
        f"sha256 {r.get('sha256') or '-'}{extra}{at}"
    )


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


class ProgressLine:
    """The progress callback: a bar redrawn in place on a terminal, plain lines otherwise
    (at most one per second, so CI logs stay readable)."""

    def __init__(self, stream: Any = None) -> None:
        self.out = stream or sys.stderr
        self.tty = self.out.isatty()
        self.last = 0.0
        self.drawn = False

    def __call__(self, ev: dict[str, Any]) -> None:
        phase = ev.get("phase", "?")
        now = time.monotonic()
        if phase in ("done", "failed"):  # the command's own last line says how it ended
            self.close()
            return
        if not self.tty and now - self.last < 1.0:
            return
        self.last = now
        done, total = ev.get("bytes", 0), ev.get("total")
        frac = None
        if total:
            frac = done / total
        elif ev.get("source_total"):
            frac = ev.get("source_bytes", 0) / ev["source_total"]
        rate = f"{ev.get('rate', 0) / (1 << 20):.1f} MiB/s"
        eta = f" eta {ev['eta']:.0f}s" if ev.get("eta") is not None else ""
        pct = "" if frac is None else f"{100 * frac:5.1f}% "
        text = f"{phase:7} {pct}{_mib(done)}{'' if not total else ' / ' + _mib(total)} {rate}{eta}"
        if ev.get("error"):
            text += f"  {ev['error']}"
        if self.tty:
            width = 30
            fill = int(width * (frac or 0))
            bar = "#" * fill + "-" * (width - fill)
            self.out.write(f"\r[{bar}] {text}\x1b[K")
            self.drawn = True
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.tty and self.drawn:
            self.out.write("\n")
            self.out.flush()
        self.drawn = False


# `labctl sim image` lives in cli/sim_cmds.py (shared with the QEMU boards).
