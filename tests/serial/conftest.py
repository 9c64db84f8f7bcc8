from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .helpers import SimDut


@pytest.fixture
def simdut(tmp_path: Path) -> Iterator[Callable[..., SimDut]]:
    """Start simdut processes on demand; every one is stopped when the test ends."""
    started: list[SimDut] = []

    def start(link: Path, power_file: Path, *extra: str) -> SimDut:
        dut = SimDut(link, power_file, *extra)
        started.append(dut)
        return dut

    yield start
    for dut in started:
        dut.stop()
