"""A power driver that keeps its state in memory: for tests of other parts and demos.

With ``state_file`` it also writes ``on``/``off`` to that file, which is how the
simulated DUT (``labctl.services.simulators.simdut --power-file``) knows when to boot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..driver import DriverConfig
from .interface import PowerDriver


class MockPowerConfig(DriverConfig):
    initial: bool = False
    outlet: int | None = None
    state_file: Path | None = None


class MockPower(PowerDriver):
    Config = MockPowerConfig
    config: MockPowerConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on = self.config.initial

    async def start(self, nursery: Any) -> None:
        self._write_state()
        self.observed(self._on)

    async def set_power(self, on: bool) -> None:
        self._on = on
        self._write_state()

    async def get_power(self) -> bool:
        return self._on

    def _write_state(self) -> None:
        if self.config.state_file is not None:
            tmp = self.config.state_file.with_suffix(".tmp")
            tmp.write_text("on\n" if self._on else "off\n")
            tmp.replace(self.config.state_file)
