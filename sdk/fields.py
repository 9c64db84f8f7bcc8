"""Field validators for what arrives from the wire: header fields and call arguments.

msgpack hands a receiver any value in any place (a map where a lease id belongs, a string
where a number does, inf, NaN, an int past SQLite's 64 bits). Each validator returns the
value in the type its user needs, or raises ``BadRequest`` naming the field, so a handler
never meets a value it did not expect (which would answer ``internal``: a bug).
``sdk/protocol.py``'s typed ``parse()`` and the broker's calls use them.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import BadRequest

#: SQLite integers are signed 64-bit; msgpack ints go up to 2^64 - 1
INT_MAX = (1 << 63) - 1
#: longest text a header field or call argument may carry (names, reasons, selectors)
MAX_TEXT = 4096
#: seconds: durations, waits, timeouts, a journal's ``since`` (anything longer is a typo)
MAX_SECONDS = 366 * 86400.0


def _kind(value: Any) -> str:
    return "nil" if value is None else type(value).__name__


def text(value: Any, field: str, max_len: int = MAX_TEXT, empty_ok: bool = True) -> str:
    """A string of at most ``max_len`` characters."""
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string, not {_kind(value)}", {"field": field})
    if len(value) > max_len:
        raise BadRequest(
            f"{field} is {len(value)} characters long; at most {max_len}", {"field": field}
        )
    if not empty_ok and not value:
        raise BadRequest(f"{field} must not be empty", {"field": field})
    return value


def optional_text(value: Any, field: str, max_len: int = MAX_TEXT) -> str | None:
    return None if value is None else text(value, field, max_len)


def flag(value: Any, field: str) -> bool:
    """A boolean (nil reads as false; 0 and 1 are accepted as older SDKs sent them)."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise BadRequest(f"{field} must be true or false, not {_kind(value)}", {"field": field})


def integer(value: Any, field: str, lo: int = 0, hi: int = INT_MAX) -> int:
    """An int in ``lo..hi`` (never a bool, a float or a string)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{field} must be an integer, not {_kind(value)}", {"field": field})
    if not lo <= value <= hi:
        raise BadRequest(f"{field} must be between {lo} and {hi}, not {value}", {"field": field})
    return value


def seconds(value: Any, field: str, zero_ok: bool = False, hi: float = MAX_SECONDS) -> float:
    """A finite number of seconds, > 0 (or ≥ 0 with ``zero_ok``), up to ``hi``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(
            f"{field} must be a number of seconds, not {_kind(value)}", {"field": field}
        )
    v = float(value) if abs(value) <= 1e300 else math.inf
    if not math.isfinite(v) or v > hi:
        raise BadRequest(
            f"{field} must be a finite number of seconds up to {hi:g}, not {value!r}",
            {"field": field},
        )
    if v < 0 or (v == 0 and not zero_ok):
        raise BadRequest(f"{field} must be positive, not {v}", {"field": field})
    return v


def text_list(value: Any, field: str, max_items: int = 1000) -> list[str]:
    """A list of strings, at most ``max_items`` long."""
    if not isinstance(value, list):
        raise BadRequest(f"{field} must be a list of strings, not {_kind(value)}", {"field": field})
    if len(value) > max_items:
        raise BadRequest(f"{field} has {len(value)} items; at most {max_items}", {"field": field})
    return [text(v, f"{field}[{i}]") for i, v in enumerate(value)]


def mapping(value: Any, field: str) -> dict[str, Any]:
    """A map (nil reads as an empty one)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{field} must be a map, not {_kind(value)}", {"field": field})
    return value


# -- driver arguments: bound to the method's signature, checked against its annotations ---
_SIMPLE: dict[str, tuple[type, ...]] = {
    "float": (int, float),
    "int": (int,),
    "str": (str,),
    "bool": (bool,),
    "bytes": (bytes,),
    "list": (list,),
    "dict": (dict,),
}


def _accepts(annotation: Any) -> tuple[tuple[type, ...], bool] | None:
    """The types an annotation admits and whether nil is one (None: not checked)."""
    if not isinstance(annotation, str):
        annotation = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
        if annotation is None:
            return None
    parts = [p.strip() for p in annotation.split("|")]
    optional = "None" in parts
    parts = [p for p in parts if p != "None"]
    if optional and len(parts) == 1 and parts[0].startswith("Optional["):
        return None
    types: tuple[type, ...] = ()
    for part in parts:
        base = part.split("[", 1)[0]
        if base not in _SIMPLE:
            return None  # a type this check does not know: the driver's business
        types += _SIMPLE[base]
    return (types, optional) if types else None


def bind_call(where: str, sig: Any, args: list[Any], kwargs: dict[str, Any]) -> None:
    """Check a REQUEST's arguments against the driver method's signature before it runs:
    arity and keywords (``inspect.Signature.bind``), and for parameters annotated with plain
    types (``float``, ``int``, ``str``, ``bool``, ``bytes``, ``list``, ``dict``, ``X | None``)
    the value's type, finite floats included. ``BadArguments`` names the parameter."""
    from .errors import BadArguments

    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise BadArguments(f"{where}{sig}: {exc}") from None
    for name, value in bound.arguments.items():
        param = sig.parameters[name]
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        accepts = _accepts(param.annotation)
        if accepts is None:
            continue
        types, optional = accepts
        if value is None and optional:
            continue
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if ok and isinstance(value, float) and not math.isfinite(value):
            ok = False
        if not ok:
            want = " or ".join(t.__name__ for t in types) + (" or nil" if optional else "")
            raise BadArguments(
                f"{where}: argument {name!r} must be {want}, not {_kind(value)}"
                + (f" {value!r}" if isinstance(value, float) else ""),
                {"argument": name},
            )
