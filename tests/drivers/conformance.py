"""The shape every registered driver must have; used by test_conformance.py.

Kept apart from the tests so the checks can also be run on a made-up broken kind, which
proves they catch what they are meant to catch.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from labctl.services.catalog import Kind
from labctl.services.driver import Driver
from labctl.services.export import exports_of

UNKNOWN_KEY = "no_such_option_anywhere"


def kind_problems(kind: Kind) -> list[str]:
    """What is wrong with the kind as a whole."""
    return [] if "mock" in kind.drivers else [f"kind {kind.name!r} has no 'mock' driver"]


def driver_problems(kind: str, interface: type[Driver], cls: type[Driver]) -> list[str]:
    """How driver class ``cls`` strays from its kind's ``interface``; empty when it conforms."""
    where = f"{kind} driver {cls.__module__}:{cls.__qualname__}"
    problems: list[str] = []
    if not issubclass(cls, interface):
        problems.append(f"{where} does not subclass {interface.__qualname__}")
    if cls.kind != kind:
        problems.append(f"{where} says kind {cls.kind!r}")
    want, got = _shape(interface), _shape(cls)
    for name in sorted(want.keys() - got.keys()):
        problems.append(f"{where} lacks export {name!r}")
    for name in sorted(got.keys() - want.keys()):
        problems.append(f"{where} exports {name!r}, which the {kind} interface does not have")
    for name in sorted(want.keys() & got.keys()):
        if want[name] != got[name]:
            problems.append(f"{where}: {name!r} is {got[name]}, the interface says {want[name]}")
    if cls.streams != interface.streams:
        problems.append(f"{where} streams {cls.streams} != interface {interface.streams}")
    try:
        cls.Config.model_validate({UNKNOWN_KEY: 1})
        problems.append(f"{where}: Config accepts an unknown key")
    except ValidationError as exc:
        if not any(
            e["type"] == "extra_forbidden" and UNKNOWN_KEY in e["loc"] for e in exc.errors()
        ):
            problems.append(f"{where}: Config does not reject unknown keys ({exc})")
    return problems


def _shape(cls: type[Driver]) -> dict[str, dict[str, Any]]:
    """Names, argument names and defaults, and mutating flags of the exports."""
    return {
        name: {"args": desc["args"], "mutating": desc["mutating"]}
        for name, desc in exports_of(cls).items()
    }
