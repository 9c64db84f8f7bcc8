"""Printing listings as table, json, yaml or names."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import click

FORMATS = ["table", "json", "yaml", "name"]


def emit(
    items: Any,
    fmt: str,
    columns: Sequence[tuple[str, Callable[[Any], Any]]],
    name_key: str = "name",
    shrink: Sequence[str] = (),
) -> None:
    """``items`` as a table (``wide``: never truncated), JSON, YAML or one name per line.

    A table on a terminal (or with $COLUMNS set) fits its width by truncating the
    ``shrink`` columns, in that order, each down to its heading ("…" marks a cut).
    """
    if fmt == "json":
        click.echo(json.dumps(items, indent=2, default=_jsonable))
    elif fmt == "yaml":
        import yaml

        click.echo(
            yaml.safe_dump(
                json.loads(json.dumps(items, default=_jsonable)), sort_keys=False
            ).rstrip()
        )
    elif fmt == "name":
        for item in items if isinstance(items, list) else [items]:
            click.echo(item[name_key])
    else:
        rows = [
            [str(get(item)) for _, get in columns]
            for item in (items if isinstance(items, list) else [items])
        ]
        heads = [h for h, _ in columns]
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(heads)]
        room = terminal_width() if fmt == "table" else None
        if room is not None:
            excess = sum(widths) + 2 * (len(widths) - 1) - room
            for head in shrink:
                i = heads.index(head)
                cut = max(0, min(excess, widths[i] - max(6, len(head))))
                widths[i] -= cut
                excess -= cut
            rows = [[_cut(c, w) for c, w in zip(r, widths, strict=True)] for r in rows]
        click.echo(
            "  ".join(h.upper().ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip()
        )
        for r in rows:
            click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def terminal_width() -> int | None:
    """Columns to fit a table in: $COLUMNS, else the terminal's; None when piped."""
    import os
    import shutil
    import sys

    if os.environ.get("COLUMNS", "").isdigit() or sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    return str(obj)


def labels_text(labels: dict[str, str]) -> str:
    hidden = {"name", "kind", "driver", "host"}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k not in hidden) or "-"


def when(ts: float, now: float | None = None) -> str:
    """Local time of ``ts``: the clock time when it is today, with the date otherwise
    (a lease ending at 08:34 tomorrow must not read as this morning)."""
    local = time.localtime(ts)
    today = time.localtime(time.time() if now is None else now)
    if local[:3] == today[:3]:
        return time.strftime("%H:%M:%S", local)
    return time.strftime("%Y-%m-%d %H:%M:%S", local)


def seconds_since(text: str, now: float | None = None) -> float:
    """``--since``: a duration ago (``90s``, ``1h30m``) or a time (ISO 8601, e.g.
    ``2026-12-01T08:00``, ``2026-12-01 08:00:00+01:00``; local time without an offset),
    as seconds before now. BadRequest naming both forms otherwise."""
    from datetime import datetime

    from labctl.durations import parse_duration
    from labctl.errors import BadRequest, LabError

    try:
        return parse_duration(text)
    except LabError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadRequest(
            f"invalid --since {text!r}: write a duration (90s, 30m, 1h30m, 2d) "
            "or a time (2026-12-01T08:00, with an optional +01:00)"
        ) from None
    ts = moment.timestamp()  # naive: local time
    return max(0.0, (time.time() if now is None else now) - ts)


def status_text(status: Any) -> str:
    if isinstance(status, dict):
        return ",".join(f"{k}={v}" for k, v in status.items())
    return "-" if status is None else str(status)
