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
) -> None:
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
        click.echo(
            "  ".join(h.upper().ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip()
        )
        for r in rows:
            click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    return str(obj)


def labels_text(labels: dict[str, str]) -> str:
    hidden = {"name", "kind", "driver", "host"}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k not in hidden) or "-"


def when(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def status_text(status: Any) -> str:
    if isinstance(status, dict):
        return ",".join(f"{k}={v}" for k, v in status.items())
    return "-" if status is None else str(status)
