from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..harness import LabHarness


def two_devices(service: str = "cans", channel: str = "lab") -> dict[str, object]:
    """Two mock CAN devices on one virtual channel in one service: can-a and can-b."""
    return {
        "service": service,
        "kind": "can",
        "driver": "mock",
        "config": {"channel": channel},
        "devices": [{"name": "can-a"}, {"name": "can-b"}],
    }


@pytest.fixture
def can_lab(harness: LabHarness) -> Iterator[LabHarness]:
    """A broker and one service with can-a and can-b on one virtual bus."""
    harness.start_broker()
    harness.start_service(two_devices())
    yield harness
