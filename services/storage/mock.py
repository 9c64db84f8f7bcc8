"""A storage driver whose card is a file: for tests of other parts, demos and the
simulated boards.

The target is ``path`` (created sparse at ``size`` when missing or shorter); the mux side
lives in the service. With ``state_file`` the side is also written to that file
(``host``/``dut``/``off``), which is how the simulated DUT knows whether its card is there.
``seed_version`` puts a simulated image on a new card, so a simulated board boots at once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator

from labctl.errors import DriverError

from .interface import ByteSize, StorageConfig, StorageDriver


class MockStorageConfig(StorageConfig):
    path: Path
    size: Annotated[ByteSize, Field(gt=0)] = 64 << 20
    initial: str = "off"
    state_file: Path | None = None
    #: when the card file is new, put a simulated image of this version on it (the
    #: example lab's boards boot out of the box)
    seed_version: str | None = None
    #: at most this many bytes/s, like a real card (tests of slow writes); 0: unlimited
    write_rate: ByteSize = 0

    @field_validator("initial", mode="before")
    @classmethod
    def _initial(cls, v: object) -> object:
        if v is False:  # YAML 1.1 reads a bare `initial: off` as false
            return "off"
        if v not in ("host", "dut", "off"):
            raise ValueError("initial must be host, dut or off")
        return v


class MockStorage(StorageDriver):
    Config = MockStorageConfig
    config: MockStorageConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._at = self.config.initial

    async def start(self, nursery: Any) -> None:
        path = self.config.path
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.config.seed_version and not path.exists():
            from .simimage import write_sim_image

            write_sim_image(str(path), self.config.seed_version, self.config.size)
        with open(path, "ab") as f:  # creates it; never truncates what a test put there
            if f.tell() < self.config.size:
                f.truncate(self.config.size)  # sparse: costs no disk
        self._write_state()
        self._observed(self._at)

    async def select(self, side: str) -> None:
        self._at = side
        self._write_state()

    async def current_side(self) -> str:
        return self._at

    async def target_path(self) -> str:
        if self._at != "host":
            raise DriverError(f"{self.name}: no medium at the host (the card is at {self._at})")
        return str(self.config.path)

    def _known_path(self) -> str | None:
        return str(self.config.path)

    def _write_state(self) -> None:
        if self.config.state_file is not None:
            # b1.side -> b1.side.tmp: never b1.tmp, which the board's mock power (b1.power)
            # uses for its own state file at the same moment (both reset at lease end)
            tmp = self.config.state_file.with_name(self.config.state_file.name + ".tmp")
            tmp.write_text(self._at + "\n")
            os.replace(tmp, self.config.state_file)
