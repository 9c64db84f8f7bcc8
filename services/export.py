"""The one marker that makes a driver method reachable over the bus.

``@export`` records the method's argument names and whether it mutates the device; the
interface description a service registers with is built from these marks, so the CLI and
SDK can list and call any method without extra code.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

MARK = "__labctl_export__"


def export(fn: F | None = None, *, mutating: bool = False) -> Any:
    """Mark a driver method as callable over the bus.

    ``mutating=True`` means the call changes the device, so the broker only lets the
    lease holder make it. Read-only methods (state, status, log tail) need no lease.
    """

    def mark(f: F) -> F:
        setattr(f, MARK, {"mutating": mutating})
        return f

    return mark(fn) if fn is not None else mark


def describe_method(fn: Callable[..., Any], mark: dict[str, Any]) -> dict[str, Any]:
    sig = inspect.signature(fn)
    args = []
    for p in sig.parameters.values():
        if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        arg: dict[str, Any] = {"name": p.name}
        if p.default is not p.empty:
            arg["default"] = p.default
        args.append(arg)
    doc = inspect.getdoc(fn) or ""
    summary = doc.split("\n\n")[0].replace("``", "")  # a one-line summary, without reST
    return {"args": args, "mutating": mark["mutating"], "doc": summary}


def exported_methods(obj: object) -> dict[str, Callable[..., Any]]:
    """Bound exported methods of ``obj``, by name (subclass overrides keep the mark)."""
    out: dict[str, Callable[..., Any]] = {}
    for cls in reversed(type(obj).__mro__):
        for name, attr in vars(cls).items():
            if getattr(attr, MARK, None) is not None:
                out[name] = getattr(obj, name)
    return out


def find_mark(obj: object, name: str) -> dict[str, Any] | None:
    for cls in type(obj).__mro__:
        attr = vars(cls).get(name)
        if attr is not None and getattr(attr, MARK, None) is not None:
            return getattr(attr, MARK)
    return None


def exports_of(cls: type) -> dict[str, dict[str, Any]]:
    """What a driver class registers: each exported method's args, mutating flag and doc.

    The same table ``Driver.interface()`` builds from an instance, without creating one.
    """
    out: dict[str, dict[str, Any]] = {}
    for klass in reversed(cls.__mro__):
        for name, attr in vars(klass).items():
            if getattr(attr, MARK, None) is not None:
                out[name] = {}
    for name in out:
        mark = next(
            getattr(vars(k)[name], MARK)
            for k in cls.__mro__
            if getattr(vars(k).get(name), MARK, None) is not None
        )
        out[name] = describe_method(getattr(cls, name), mark)
    return out
