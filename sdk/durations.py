"""Durations as people write them: ``30m``, ``1h30m``, ``90s``, ``2d``, or plain seconds."""

from __future__ import annotations

import math
import re

from .errors import BadRequest

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(value: str | float | int) -> float:
    """Seconds in ``value``; BadRequest with an example when it does not parse."""
    seconds = float(value) if isinstance(value, (int, float)) else _parse(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise BadRequest(f"invalid duration {value!r}; write it like 90s, 30m, 1h30m or 2d")
    return seconds


def _parse(value: str) -> float:
    text = value.strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise BadRequest(f"invalid duration {value!r}; write it like 90s, 30m, 1h30m or 2d")
    return total
