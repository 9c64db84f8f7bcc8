from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..harness import LabHarness


def storage_service(
    root: Path, name: str = "sd1", size: str = "300MiB", **config: Any
) -> dict[str, Any]:
    """A mock storage service (one device, its own DUT group) whose card is ``root/NAME.card``."""
    cfg = {"path": str(root / f"{name}.card"), "size": size, "fsync": False, **config}
    return {"service": name, "kind": "storage", "driver": "mock", "name": name,
            "labels": {"dut": f"{name}-board"}, "config": cfg}  # fmt: skip


@pytest.fixture
def storage_lab(harness: LabHarness) -> Iterator[LabHarness]:
    harness.start_broker()
    harness.start_service(storage_service(harness.root))
    yield harness
