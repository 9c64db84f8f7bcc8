"""pytest plugin (auto-loaded through the ``pytest11`` entry point).

    @pytest.mark.lab("board=rpi4", duration="20m", wait="10m")
    def test_boots(lease):
        lease.power.on()

Fixtures: ``lab`` (a connected ``Lab``, one per session) and ``lease`` (the devices the
test's ``lab`` marker selects, leased for that test and released after it, also when it
fails). The broker comes from ``--lab-broker`` or ``LABCTL_BROKER``. A test that runs
inside ``labctl shell`` (``LABCTL_LEASE`` set) and has no marker uses that lease.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("labctl")
    group.addoption(
        "--lab-broker", default=None, help="labctl broker address (default: LABCTL_BROKER)"
    )
    group.addoption("--lab-wait", default="0", help="default time to queue for a lease (e.g. 10m)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "lab(selector, duration='30m', wait=None): lease devices matching selector for this test",
    )


@pytest.fixture(scope="session")
def lab(pytestconfig: pytest.Config) -> Iterator[Any]:
    from labctl.lab import Lab

    with Lab(pytestconfig.getoption("lab_broker")) as connected:
        yield connected


@pytest.fixture
def lease(request: pytest.FixtureRequest, lab: Any) -> Iterator[Any]:
    marker = request.node.get_closest_marker("lab")
    if marker is None:
        existing = os.environ.get("LABCTL_LEASE")
        if existing:
            yield lab.attach(existing)
            return
        raise pytest.UsageError(
            f'{request.node.nodeid}: the lease fixture needs @pytest.mark.lab("SELECTOR")'
        )
    if not marker.args:
        raise pytest.UsageError(f"{request.node.nodeid}: @pytest.mark.lab needs a selector")
    selector = marker.args[0]
    duration = marker.kwargs.get("duration", "30m")
    wait = marker.kwargs.get("wait", request.config.getoption("lab_wait"))
    with lab.lease(selector, duration=duration, wait=wait) as held:
        yield held
