"""What each device kind declares for the client side, read without loading a driver.

A kind is the package ``labctl.services.<kind>``; its ``__init__`` holds names only
(``KIND``, ``INTERFACE``, ``DRIVERS``, and optionally ``CLI`` and ``CLIENT``)::

    CLI = "labctl.cli.storage_cmds:storage"     # the kind's click group, `labctl storage ...`
    CLIENT = "labctl.storage:StorageDevice"     # the SDK proxy for its devices

So a new kind adds its own files and nothing else: the CLI registers its group from here and
``Lab.device()``/``lease.<kind>`` build its proxy from here. Reading these imports only
that ``__init__`` (a conformance test keeps it free of imports), never the service runtime
or a driver library, so the SDK still does not depend on a service (DESIGN §1).

What may go wrong: a kind whose ``CLIENT``/``CLI`` target does not import raises the
ImportError when it is first used, naming the target.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from types import ModuleType
from typing import Any

PACKAGE = "labctl.services"


def _declaration(kind: str) -> ModuleType | None:
    if not kind or not kind.isidentifier():
        return None  # a kind name comes off the wire: never an import path
    try:
        module = importlib.import_module(f"{PACKAGE}.{kind}")
    except ImportError:
        return None
    return module if getattr(module, "KIND", None) == kind else None


def load(target: str) -> Any:
    """The object a ``module:attribute`` string names."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@functools.cache
def client_target(kind: str | None) -> str | None:
    """The ``CLIENT`` a kind declares (``module:Class``), None when it has none."""
    module = _declaration(kind or "")
    target = getattr(module, "CLIENT", None)
    return target if isinstance(target, str) else None


@functools.cache
def cli_targets() -> dict[str, str]:
    """Every kind's ``CLI`` click group, by kind name (the command's name)."""
    services = importlib.import_module(PACKAGE)
    found: dict[str, str] = {}
    for info in pkgutil.iter_modules(services.__path__):
        if not info.ispkg:
            continue
        module = _declaration(info.name)
        target = getattr(module, "CLI", None)
        if isinstance(target, str):
            found[info.name] = target
    return found
