"""The power interface: ``on``, ``off``, ``cycle``, ``state``, ``read``.

Drivers implement three small primitives (``set_power``, ``get_power`` and optionally
``read_power``); everything users call, state-change events and ``cycle`` included, is
written once here so every driver behaves the same.
"""

from __future__ import annotations

import contextlib
from typing import Any

import trio

from labctl.errors import NotSupported

from ..driver import Driver
from ..export import export


class PowerDriver(Driver):
    kind = "power"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last: bool | None = None
        self._switches = 0  # counts switches, so a read that overlapped one is not published

    async def start(self, nursery: trio.Nursery) -> None:
        """Read the state once in the background so listings show it from the start."""
        nursery.start_soon(self._first_state)

    async def _first_state(self) -> None:
        with contextlib.suppress(Exception):  # unreachable hardware: the first call reports it
            await self.state()

    # -- primitives a driver implements -------------------------------------------------
    async def set_power(self, on: bool) -> None:
        raise NotImplementedError

    async def get_power(self) -> bool:
        raise NotImplementedError

    async def read_power(self) -> dict[str, float]:
        raise NotSupported(f"{self.name}: this power driver measures nothing")

    # -- the interface ------------------------------------------------------------------
    @export(mutating=True)
    async def on(self) -> str:
        """Switch the outlet on."""
        await self.set_power(True)
        self._switches += 1
        self.observed(True)
        return "on"

    @export(mutating=True)
    async def off(self) -> str:
        """Switch the outlet off."""
        await self.set_power(False)
        self._switches += 1
        self.observed(False)
        return "off"

    @export(mutating=True)
    async def cycle(self, wait: float = 2.0) -> str:
        """Switch off, wait ``wait`` seconds, switch on."""
        await self.off()
        await trio.sleep(float(wait))
        return await self.on()

    @export
    async def state(self) -> str:
        """Read the outlet state back from the hardware: ``on`` or ``off``."""
        switches = self._switches
        on = await self.get_power()
        if switches == self._switches:  # a switch meanwhile makes this reading stale
            self.observed(on)
        return "on" if on else "off"

    @export
    async def read(self) -> dict[str, float]:
        """Voltage, current and power where the hardware measures them."""
        return await self.read_power()

    async def reset(self) -> None:
        await self.off()

    def observed(self, on: bool) -> None:
        """Record a state seen on the hardware; publish it when it changed.

        Drivers call this for changes made outside labctl too (SNMP polling, MQTT stat).
        """
        if on != self._last:
            self._last = on
            self.ctx.publish_status({"state": "on" if on else "off"})
