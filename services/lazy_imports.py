"""Modules a service's libraries import but an idle service never uses, imported for real
the first time something uses them (DESIGN §13: an idle service < 40 MB).

trio imports ssl, hmac and idna, structlog asyncio (which imports ssl too), pydantic
importlib.metadata, labctl.core secrets (see UNUSED_AT_IDLE for what for): about 8 MiB
resident in an idle service, mostly OpenSSL's libssl and libcrypto and their set-up,
asyncio's 30 modules and importlib.metadata's email package. Whatever does use one still
works: a TLS connection (paho-mqtt, an https download), a driver's asyncio bridge, an event
subscription's token each import the module for real on first use.

How: inside a :func:`deferred` block, each of these names is in ``sys.modules`` as a
:class:`DeferredModule`, so ``import ssl`` binds that stand-in where it runs. When the block
ends, the stand-ins leave ``sys.modules`` (later imports are ordinary ones) but stay bound
where they were imported, and hand every attribute over from the real module, imported the
first time one is asked for. There is only ever one real module.

Not ``importlib.util.LazyLoader``: an ``import`` of a module already in ``sys.modules`` reads
its ``__spec__``, which loads a lazy module (python/cpython#127036: trio's second ``import
ssl`` would), and when a package's first use is an import of one of its submodules
(``import asyncio.events``), that submodule runs twice: two ``asyncio.events``.

What may go wrong: inside the block, ``import asyncio.events`` fails with "'asyncio' is not a
package" (a stand-in has no ``__path__``, so that no submodule runs before its package; a
service's start-up imports none, tests/test_service_footprint.py starts one). Code comparing
modules by identity sees a stand-in where one was bound (``trio._ssl._stdlib_ssl``).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import threading
import types
from collections.abc import Iterator
from importlib.machinery import ModuleSpec
from typing import Any

#: imported at a service's start by the libraries it needs, used by no idle service
UNUSED_AT_IDLE = (
    "ssl",  # trio (SSLStream), asyncio: libssl, OpenSSL's set-up
    "asyncio",  # structlog (its async log methods)
    "hmac",  # trio (DTLS), secrets: libcrypto, through _hashlib
    "secrets",  # labctl.core (event subscription tokens)
    "importlib.metadata",  # pydantic (its plugin loader; a service turns plugins off)
    "idna",  # trio (host names for its own sockets; a service's are ZeroMQ's)
)

_unbinding = threading.Lock()  # two threads' first uses inside the block: one import


class DeferredModule(types.ModuleType):
    """Stands for the module of the same name, imported on first attribute use."""

    def __init__(self, spec: ModuleSpec) -> None:
        super().__init__(spec.name)
        self.__spec__ = spec  # what importlib.util.find_spec answers meanwhile

    def __getattr__(self, attr: str) -> Any:  # any attribute but its name and spec
        name = self.__name__
        if attr == "__path__":  # not a package to the import system: see the module docstring
            raise AttributeError(f"{name} is deferred: import it before its submodules")
        if sys.modules.get(name) is self:  # first use inside the block
            with _unbinding:
                if sys.modules.get(name) is self:
                    del sys.modules[name]
        return getattr(importlib.import_module(name), attr)


@contextlib.contextmanager
def deferred(names: tuple[str, ...] = UNUSED_AT_IDLE) -> Iterator[None]:
    """Imports of ``names`` inside the block bind stand-ins; not of a module imported already,
    nor of one not installed (``try: import ssl`` / ``except ImportError`` still works)."""
    standins = {}
    for name in names:
        if name not in sys.modules and (spec := importlib.util.find_spec(name)) is not None:
            standins[name] = DeferredModule(spec)
    sys.modules.update(standins)
    try:
        yield
    finally:
        for name, standin in standins.items():
            if sys.modules.get(name) is standin:
                del sys.modules[name]
