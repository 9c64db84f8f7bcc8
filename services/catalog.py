"""The device kinds and their drivers, found rather than listed.

A kind is a sub-package of ``labctl.services`` whose ``__init__`` names, without importing
them, its interface class and its drivers::

    KIND = "power"
    INTERFACE = "labctl.services.power.interface:PowerDriver"
    DRIVERS = {"mock": "labctl.services.power.mock:MockPower", ...}

Other distributions add drivers through the entry-point group ``labctl.drivers``: entry
name ``<kind>.<driver>``, value ``module:Class`` (see docs/drivers.md). Finding the catalog
imports only the kinds' ``__init__`` modules and reads installed metadata; a driver module
(and its library: pysnmp, paho, pyusb, ...) is imported when a service uses it.

What may go wrong: a kind package that fails to import, or an entry point for a kind
labctl does not have, is left out; asking for it gives a ConfigError that says why.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Any

from labctl.errors import ConfigError

from .driver import Driver

#: the entry-point group third-party drivers register in
ENTRY_POINT_GROUP = "labctl.drivers"


@dataclasses.dataclass(frozen=True)
class Kind:
    """One device kind: its interface class and its drivers, as ``module:Class`` strings."""

    name: str
    interface: str
    drivers: dict[str, str]
    #: where each driver came from: the kind's package or a distribution's entry point
    origins: dict[str, str]


@dataclasses.dataclass(frozen=True)
class Catalog:
    kinds: dict[str, Kind]
    #: what could not be added, and why (broken packages, drivers of unknown kinds)
    problems: list[str]


@functools.cache
def catalog() -> Catalog:
    """Every kind package under ``labctl.services``, plus the ``labctl.drivers`` entry points."""
    import pkgutil  # only here: a service loads its one driver without listing the kinds

    import labctl.services

    kinds: dict[str, Kind] = {}
    problems: list[str] = []
    for info in pkgutil.iter_modules(labctl.services.__path__, "labctl.services."):
        if not info.ispkg:
            continue
        try:
            package = importlib.import_module(info.name)
        except Exception as exc:  # one broken kind must not take the others down
            problems.append(f"{info.name} does not import: {type(exc).__name__}: {exc}")
            continue
        kind = _kind_of(package)
        if kind is None:
            continue  # a helper package (bridges, simulators)
        if isinstance(kind, str):
            problems.append(kind)
        else:
            kinds[kind.name] = kind
    from importlib import metadata  # ~2 MB resident: only when the whole catalog is asked for

    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        kind_name, _, driver = ep.name.partition(".")
        dist = ep.dist.name if ep.dist is not None else "an installed distribution"
        origin = f"entry point {ep.name!r} of {dist}"
        if not driver or ":" not in ep.value:
            problems.append(f"{origin}: name must be <kind>.<driver>, value module:Class")
        elif kind_name not in kinds:
            problems.append(f"{origin}: labctl has no kind {kind_name!r}")
        elif driver in kinds[kind_name].drivers:
            problems.append(f"{origin}: {kind_name} driver {driver!r} exists already; ignored")
        else:
            kinds[kind_name].drivers[driver] = ep.value
            kinds[kind_name].origins[driver] = origin
    return Catalog(kinds, problems)


def _kind_of(package: Any) -> Kind | str | None:
    """The Kind a package declares, a problem description, or None for non-kind packages."""
    name = getattr(package, "KIND", None)
    if name is None:
        return None
    interface = getattr(package, "INTERFACE", None)
    drivers = getattr(package, "DRIVERS", None)
    if (
        not isinstance(name, str)
        or not isinstance(interface, str)
        or not isinstance(drivers, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in drivers.items())
    ):
        return f"{package.__name__}: KIND, INTERFACE and DRIVERS must be strings and a dict"
    origin = f"package {package.__name__}"
    return Kind(name, interface, dict(drivers), dict.fromkeys(drivers, origin))


def kinds() -> dict[str, Kind]:
    """Every known kind, by name."""
    return catalog().kinds


def _kind(kind: str) -> Kind:
    found = catalog().kinds.get(kind)
    if found is None:
        known = ", ".join(sorted(catalog().kinds)) or "none"
        why = [p for p in catalog().problems if kind in p]
        hint = f" ({'; '.join(why)})" if why else ""
        raise ConfigError(f"unknown kind {kind!r}; known kinds: {known}{hint}")
    return found


def load_driver(kind: str, driver: str) -> type[Driver]:
    """The driver class for ``kind``/``driver``; a clear ConfigError when there is none."""
    builtin = _builtin_driver(kind, driver)
    if builtin is not None:  # the kind's own driver wins over entry points anyway
        return _load(builtin, f"{kind} driver {driver!r} (package labctl.services.{kind})")
    k = _kind(kind)
    target = k.drivers.get(driver)
    if target is None:
        raise ConfigError(
            f"unknown {kind} driver {driver!r}; known: {', '.join(sorted(k.drivers))}"
        )
    return _load(target, f"{kind} driver {driver!r} ({k.origins[driver]})")


def _builtin_driver(kind: str, driver: str) -> str | None:
    """``module:Class`` of a driver the kind's package names, read without the catalog
    (a service starts without scanning installed distributions for entry points)."""
    if not kind.isidentifier():
        return None
    try:
        package = importlib.import_module(f"labctl.services.{kind}")
    except ImportError:
        return None
    drivers = getattr(package, "DRIVERS", None)
    target = drivers.get(driver) if isinstance(drivers, dict) else None
    return target if isinstance(target, str) else None


def load_interface(kind: str) -> type[Driver]:
    """The interface class every driver of ``kind`` implements."""
    return _load(_kind(kind).interface, f"the {kind} interface")


def _load(target: str, what: str) -> type[Driver]:
    module, _, name = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{what}: cannot load {target}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise ConfigError(f"{what}: {target} is not a labctl Driver class")
    return cls
