"""Where each (kind, driver) pair lives; drivers are imported only when a service uses them."""

from __future__ import annotations

import importlib

from labctl.errors import ConfigError

from .driver import Driver

DRIVERS: dict[str, dict[str, str]] = {
    "power": {
        "mock": "labctl.services.power.mock:MockPower",
        "snmp": "labctl.services.power.snmp:SnmpPower",
        "tasmota": "labctl.services.power.tasmota:TasmotaPower",
        "ykush": "labctl.services.power.ykush:YkushPower",
        "shell": "labctl.services.power.shell:ShellPower",
    },
    "serial": {
        "pyserial": "labctl.services.serial.driver:SerialConsole",
        "mock": "labctl.services.serial.mock:MockSerial",
    },
}


def load_driver(kind: str, driver: str) -> type[Driver]:
    """The driver class for ``kind``/``driver``; a clear ConfigError when there is none."""
    kinds = DRIVERS.get(kind)
    if kinds is None:
        raise ConfigError(f"unknown kind {kind!r}; known kinds: {', '.join(sorted(DRIVERS))}")
    target = kinds.get(driver)
    if target is None:
        raise ConfigError(f"unknown {kind} driver {driver!r}; known: {', '.join(sorted(kinds))}")
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]
