"""``labctl can``: CAN in can-utils syntax (cansend, candump -L, canplayer, isotpsend/isotprecv).

    labctl can send DEV 123#DEADBEEF          (123#R, 12345678#..., 123##1DEADBEEF for FD+BRS)
    labctl can dump DEV [123:7FF] [100~7F0] [#FFFFFFFF]   prints (1700000000.123456) DEV 123#DEADBEEF
    labctl can play DEV FILE.log              replays a candump -L log with its timing
    labctl can isotp-send DEV -s 7E0 -d 7E8 [DATA]   /   labctl can isotp-recv DEV -s 7E0 -d 7E8
    labctl can state DEV

Bad syntax is one error naming the column, the text and a caret under the offending
character (exit 2). Every device access goes through the public SDK (``labctl.can``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from .commands import lease_option
from .main import broker_option, lab_from, main, output_option

EFF_FLAG, RTR_FLAG, ERR_FLAG = 0x80000000, 0x40000000, 0x20000000
HEX = "0123456789abcdefABCDEF"


def syntax_error(what: str, text: str, pos: int, message: str) -> Exception:
    """BadArguments pointing a caret at ``text[pos]``; ``details`` keep the column (0-based)
    and the reason, so a caller can re-point it into a longer line."""
    from labctl.errors import BadArguments

    return BadArguments(
        f"invalid {what} at column {pos + 1}: {message}\n  {text}\n  {' ' * pos}^",
        {"column": pos, "reason": message},
    )


# -- can-utils syntax -----------------------------------------------------------------------
def parse_frame(text: str) -> dict[str, Any]:
    """cansend's ``<id>#<data>``, ``<id>#R[len]``, ``<id>##<flags><data>`` as ``send`` kwargs."""
    hash_at = text.find("#")
    if hash_at < 0:
        raise syntax_error("frame", text, len(text), "expected '#' after the CAN id")
    ident = text[:hash_at]
    if len(ident) not in (3, 8):
        raise syntax_error(
            "frame", text, 0, "the CAN id has 3 (standard) or 8 (extended) hex digits"
        )
    for i, ch in enumerate(ident):
        if ch not in HEX:
            raise syntax_error("frame", text, i, f"{ch!r} is not a hex digit")
    extended = len(ident) == 8
    can_id = int(ident, 16)
    if can_id > (0x1FFFFFFF if extended else 0x7FF):
        raise syntax_error("frame", text, 0, f"id {ident} is out of range")
    kwargs: dict[str, Any] = {"id": can_id, "extended": extended}
    pos = hash_at + 1
    if text[pos : pos + 1] in ("R", "r"):
        rest = text[pos + 1 :]
        if rest and (len(rest) > 1 or rest not in "012345678"):
            raise syntax_error("frame", text, pos + 1, "a remote frame takes one length digit 0-8")
        return {**kwargs, "remote": True, "dlc": int(rest or 0)}
    limit = 8
    if text[pos : pos + 1] == "#":
        flag = text[pos + 1 : pos + 2]
        if not flag or flag not in HEX:
            raise syntax_error("frame", text, pos + 1, "an FD frame needs a flags digit after '##'")
        kwargs.update(fd=True, brs=bool(int(flag, 16) & 1))
        pos, limit = pos + 2, 64
    data = bytearray()
    i = pos
    while i < len(text):
        if text[i] == ".":
            i += 1
            continue
        pair = text[i : i + 2]
        if text[i] not in HEX:
            raise syntax_error("frame", text, i, f"{text[i]!r} is not a hex digit")
        if len(pair) < 2 or pair[1] == ".":
            raise syntax_error("frame", text, i, "data bytes are two hex digits each")
        if pair[1] not in HEX:
            raise syntax_error("frame", text, i + 1, f"{pair[1]!r} is not a hex digit")
        if len(data) == limit:
            raise syntax_error("frame", text, i, f"more than {limit} data bytes")
        data.append(int(pair, 16))
        i += 2
    if kwargs.get("fd"):
        from labctl.can import FD_LENGTHS

        if len(data) not in FD_LENGTHS:
            raise syntax_error(
                "frame", text, len(text), f"an FD frame carries one of {FD_LENGTHS} bytes"
            )
    kwargs["data"] = bytes(data)
    return kwargs


def parse_filter(text: str) -> dict[str, Any]:
    """candump's ``id:mask``, ``id~mask`` (inverted) or ``#errmask``."""
    if text.startswith("#"):
        return {"errmask": _hex(text, 1, len(text), "filter")}
    for sep, invert in ((":", False), ("~", True)):
        at = text.find(sep)
        if at >= 0:
            ident = _hex(text, 0, at, "filter")
            mask = _hex(text, at + 1, len(text), "filter")
            if at == 8:  # 8-digit ids are extended, as in candump
                ident |= EFF_FLAG
            return {"id": ident, "mask": mask & ~ERR_FLAG, "invert": invert}
    raise syntax_error("filter", text, 0, "expected <id>:<mask>, <id>~<mask> or #<errmask>")


def _hex(text: str, start: int, stop: int, what: str) -> int:
    if start >= stop:
        raise syntax_error(what, text, start, "expected hex digits")
    for i in range(start, stop):
        if text[i] not in HEX:
            raise syntax_error(what, text, i, f"{text[i]!r} is not a hex digit")
    if stop - start > 8:
        raise syntax_error(what, text, start + 8, "at most 8 hex digits")
    return int(text[start:stop], 16)


def format_frame(msg: Any) -> str:
    """One frame in cansend/candump -L notation."""
    if msg.is_error_frame:
        ident = f"{msg.arbitration_id | ERR_FLAG:08X}"
    elif msg.is_extended_id:
        ident = f"{msg.arbitration_id:08X}"
    else:
        ident = f"{msg.arbitration_id:03X}"
    if msg.is_remote_frame:
        return f"{ident}#R{msg.dlc or ''}"
    data = bytes(msg.data).hex().upper()
    if msg.is_fd:
        flags = (1 if msg.bitrate_switch else 0) | (2 if msg.error_state_indicator else 0)
        return f"{ident}##{flags:X}{data}"
    return f"{ident}#{data}"


def parse_log_line(line: str) -> tuple[float, str, dict[str, Any]] | None:
    """``(timestamp) iface frame`` from a candump -L log; None for blank/comment lines."""
    text = line.rstrip("\n")
    if not text.strip() or text.lstrip().startswith("#"):
        return None
    if not text.startswith("("):
        raise syntax_error("log line", text, 0, "expected '(timestamp)'")
    close = text.find(")")
    if close < 0:
        raise syntax_error("log line", text, len(text), "expected ')' after the timestamp")
    try:
        ts = float(text[1:close])
    except ValueError:
        raise syntax_error("log line", text, 1, "the timestamp is not a number") from None
    parts = text[close + 1 :].split()
    if len(parts) < 2:
        raise syntax_error("log line", text, len(text), "expected an interface and a frame")
    iface_at = text.index(parts[0], close + 1)
    frame_at = text.index(parts[1], iface_at + len(parts[0]))
    from labctl.errors import BadArguments

    try:
        frame = parse_frame(parts[1])
    except BadArguments as exc:  # re-point the caret into the whole line
        col, reason = exc.details["column"], exc.details["reason"]
        raise syntax_error("log line", text, frame_at + col, reason) from None
    return ts, parts[0], frame


# -- access ---------------------------------------------------------------------------------
@contextmanager
def can_device(broker: str | None, name: str, lease_id: str | None, write: bool) -> Iterator[Any]:
    """The device, with the given lease or (writing without one) a lease on it alone, held
    only for this command."""
    with lab_from(broker) as lab:
        if not write:
            yield lab.device(name)
        elif lease_id is not None:
            yield lab.device(name, lease=lab.attach(lease_id))
        else:
            with lab.lease(f"name={name}") as held:
                yield held[name]


@main.group()
def can() -> None:
    """CAN buses in can-utils syntax: send, dump, play, isotp-send, isotp-recv, state."""


@can.command("send")
@click.argument("device_name")
@click.argument("frame")
@lease_option
@broker_option
def send(device_name: str, frame: str, lease_id: str | None, broker: str | None) -> None:
    """Send one frame (cansend syntax): 123#DEADBEEF, 1F334455#11.22, 123#R, 123##1DEADBEEF."""
    kwargs = parse_frame(frame)
    with can_device(broker, device_name, lease_id, write=True) as dev:
        dev.send(**kwargs)


@can.command("dump")
@click.argument("device_name")
@click.argument("filters", nargs=-1)
@click.option("-n", "count", type=int, default=None, help="Exit after COUNT frames.")
@click.option("-T", "timeout_ms", type=int, default=None, help="Exit after MS ms without a frame.")
@broker_option
def dump(
    device_name: str,
    filters: tuple[str, ...],
    count: int | None,
    timeout_ms: int | None,
    broker: str | None,
) -> None:
    """Print frames as candump -L does: (1700000000.123456) DEV 123#DEADBEEF.

    FILTERS (also DEV,FILTER,...): id:mask passes when frame_id & mask == id & mask; id~mask
    inverts; #errmask shows error frames of those classes; 8-digit ids are extended."""
    name, *inline = device_name.split(",")
    parsed = [parse_filter(f) for f in [*inline, *filters] if f]
    errmask = 0
    for f in parsed:
        errmask |= f.pop("errmask", 0)
    frame_filters = [f for f in parsed if f]
    out = sys.stdout
    seen = 0
    with (
        can_device(broker, name, None, write=False) as dev,
        dev.frames(frame_filters, errmask) as frames,
    ):
        timeout = None if timeout_ms is None else timeout_ms / 1000
        while count is None or seen < count:
            batch = frames.recv_batch(timeout)
            if not batch:
                break
            lines = []
            for msg in batch[: None if count is None else count - seen]:
                lines.append(f"({msg.timestamp:.6f}) {name} {format_frame(msg)}\n")
            seen += len(lines)
            out.write("".join(lines))
            out.flush()
        if frames.lost:
            click.echo(f"[labctl] {frames.lost} frames lost (reader fell behind)", err=True)


@can.command("play")
@click.argument("device_name")
@click.argument("logfile", type=click.File("r"))
@click.option("-t", "ignore_time", is_flag=True, help="Ignore timestamps: send at once.")
@click.option("-i", "interface", default=None, help="Only replay lines of this interface.")
@lease_option
@broker_option
def play(
    device_name: str,
    logfile: Any,
    ignore_time: bool,
    interface: str | None,
    lease_id: str | None,
    broker: str | None,
) -> None:
    """Replay a candump -L log (canplayer) on DEVICE, keeping its timing unless -t."""
    from labctl.can import message

    entries = []
    for line in logfile:
        entry = parse_log_line(line)
        if entry is not None and (interface is None or entry[1] == interface):
            entries.append(entry)
    with can_device(broker, device_name, lease_id, write=True) as dev, dev.writer() as out:
        if not entries:
            return
        start, first = time.monotonic(), entries[0][0]
        for ts, _iface, kwargs in entries:
            if not ignore_time:
                delay = (ts - first) - (time.monotonic() - start)
                if delay > 0:
                    time.sleep(delay)
            out.send(message(**kwargs))
        out.stream.finish(timeout=30)
    click.echo(f"played {len(entries)} frames", err=True)


def isotp_options(fn: Any) -> Any:
    for option in reversed([
        click.option("-s", "txid", required=True, help="Source CAN id (we send on it), hex."),
        click.option("-d", "rxid", required=True, help="Destination CAN id (we receive on it), hex."),
        click.option("-x", "ext", default=None, help="Extended addressing: <tx addr>[:<rx addr>], hex."),
        click.option("-X", "mixed", default=None, help="Mixed addressing: address extension byte, hex."),
        click.option("-p", "padding", default=None, help="Padding byte, hex: <tx>[:<rx>]."),
        click.option("-b", "blocksize", type=int, default=8, show_default=True, help="Block size in flow control."),
        click.option("-m", "stmin", default="0", show_default=True, help="STmin in flow control, hex."),
        click.option("-L", "fd", is_flag=True, help="CAN FD link layer (64-byte frames)."),
        click.option("-w", "--wait", "timeout", type=float, default=5.0, show_default=True, help="Seconds to wait for the peer."),
    ]):  # fmt: skip
        fn = option(fn)
    return fn


def _isotp_kwargs(txid: str, rxid: str, ext: str | None, mixed: str | None, padding: str | None,
                  blocksize: int, stmin: str, fd: bool, timeout: float) -> dict[str, Any]:  # fmt: skip
    kwargs: dict[str, Any] = {"txid": _hex(txid, 0, len(txid), "CAN id"),
                              "rxid": _hex(rxid, 0, len(rxid), "CAN id"),
                              "blocksize": blocksize, "stmin": _hex(stmin, 0, len(stmin), "stmin"),
                              "fd": fd, "wait": timeout}  # fmt: skip
    if ext is not None:
        tx, _, rx = ext.partition(":")
        kwargs.update(addressing="extended", target_address=_hex(tx, 0, len(tx), "address"),
                      source_address=_hex(rx or tx, 0, len(rx or tx), "address"))  # fmt: skip
    if mixed is not None:
        kwargs.update(addressing="mixed", address_extension=_hex(mixed, 0, len(mixed), "address"))
    if padding is not None:
        tx = padding.partition(":")[0]
        kwargs["padding"] = _hex(tx, 0, len(tx), "padding")
    return kwargs


def _data(text: str) -> bytes:
    compact = text.replace(" ", "").replace("\n", "").replace("\t", "")
    for i, ch in enumerate(compact):
        if ch not in HEX:
            raise syntax_error("data", compact, i, f"{ch!r} is not a hex digit")
    if len(compact) % 2:
        raise syntax_error("data", compact, len(compact) - 1, "data bytes are two hex digits each")
    return bytes.fromhex(compact)


@can.command("isotp-send")
@click.argument("device_name")
@click.argument("data", required=False)
@isotp_options
@lease_option
@broker_option
def isotp_send(
    device_name: str, data: str | None, lease_id: str | None, broker: str | None, **opts: Any
) -> None:
    """Send one ISO-TP PDU (isotpsend): DATA, or hex bytes on stdin ("22 F1 90")."""
    kwargs = _isotp_kwargs(**opts)
    payload = _data(data if data is not None else sys.stdin.read())
    with can_device(broker, device_name, lease_id, write=True) as dev:
        dev.isotp_send(payload, **kwargs)


@can.command("isotp-recv")
@click.argument("device_name")
@click.option(
    "-l", "loop", is_flag=True, help="Keep receiving (until Ctrl-C or -w seconds without a PDU)."
)
@isotp_options
@lease_option
@broker_option
def isotp_recv(
    device_name: str, loop: bool, lease_id: str | None, broker: str | None, **opts: Any
) -> None:
    """Receive ISO-TP PDUs (isotprecv) and print each as hex bytes ("62 F1 90 ...")."""
    from labctl.errors import Timeout

    kwargs = _isotp_kwargs(**opts)
    with (
        can_device(broker, device_name, lease_id, write=True) as dev,
        dev.isotp(write=True, **kwargs) as session,
    ):
        while True:
            pdu = session.recv(kwargs["wait"])
            if pdu is None:
                if loop:
                    return
                raise Timeout(f"no ISO-TP PDU on {device_name} within {kwargs['wait']:g}s")
            click.echo(" ".join(f"{b:02X}" for b in pdu))
            if not loop:
                return


@can.command("state")
@click.argument("device_name")
@output_option
@broker_option
def state(device_name: str, fmt: str, broker: str | None) -> None:
    """Bus state, error counters (where the interface has them), bit rates, counts."""
    from .output import emit

    with can_device(broker, device_name, None, write=False) as dev:
        info = dev.state()
    if fmt != "table":
        emit(info, fmt, [], "state")
        return
    for key, value in info.items():
        click.echo(f"{key + ':':<16}{value if value is not None else '-'}")
