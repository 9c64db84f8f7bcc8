"""A power driver that keeps its state in memory: for tests of other parts and demos."""

from __future__ import annotations

from ..driver import DriverConfig
from .interface import PowerDriver


class MockPowerConfig(DriverConfig):
    initial: bool = False
    outlet: int | None = None


class MockPower(PowerDriver):
    Config = MockPowerConfig
    config: MockPowerConfig

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._on = self.config.initial

    async def start(self, nursery) -> None:  # type: ignore[no-untyped-def]
        self.observed(self._on)

    async def set_power(self, on: bool) -> None:
        self._on = on

    async def get_power(self) -> bool:
        return self._on
