"""pytest plugin (auto-loaded through the ``pytest11`` entry point).

    @pytest.mark.lab("board=rpi4", duration="20m", wait="10m")
    def test_boots(lease):
        lease.power.on()

Fixtures: ``lab`` (a connected ``Lab``, one per session) and ``lease`` (the devices the
test's ``lab`` marker selects, leased for that test and released after it, also when it
fails). The broker comes from ``--lab-broker`` or ``LABCTL_BROKER``.

Inside ``labctl shell`` (``LABCTL_LEASE`` set) a test without a marker, or whose marker's
selector matches a device of the shell's lease, uses that lease (taking a second one would
queue behind itself). A marked test queues for its lease up to ``wait`` (marker), else
``--lab-wait`` (default 30m), printing its queue position; failing to get one (no match,
wait ran out) fails the test with one line, not a traceback.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import pytest

DEFAULT_WAIT = "30m"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("labctl")
    group.addoption(
        "--lab-broker", default=None, help="labctl broker address (default: LABCTL_BROKER)"
    )
    group.addoption(
        "--lab-wait",
        default=DEFAULT_WAIT,
        help=f"default time to queue for a lease (default {DEFAULT_WAIT}; 0: fail if busy)",
    )


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
    existing = os.environ.get("LABCTL_LEASE")
    if marker is None:
        if existing:
            yield lab.attach(existing)
            return
        raise pytest.UsageError(
            f'{request.node.nodeid}: the lease fixture needs @pytest.mark.lab("SELECTOR")'
        )
    if not marker.args:
        raise pytest.UsageError(f"{request.node.nodeid}: @pytest.mark.lab needs a selector")
    selector = marker.args[0]
    if existing:
        shell = _shell_lease_for(lab, existing, selector)
        if shell is not None:
            yield shell
            return
    duration = marker.kwargs.get("duration", "30m")
    wait = marker.kwargs.get("wait", request.config.getoption("lab_wait"))
    held = _acquire(request, lab, selector, duration, wait)
    with held:
        yield held


def _shell_lease_for(lab: Any, lease_id: str, selector: str) -> Any:
    """The shell's lease if ``selector`` matches one of its devices, else None."""
    from labctl.errors import LabError

    try:
        shell = lab.attach(lease_id)
        matching = {d["name"] for d in lab.devices(selector)}
    except LabError as exc:
        failed = f"labctl: the shell's lease: {type(exc).__name__}: {exc.message}"
    else:
        return shell if matching & set(shell.devices) else None
    pytest.fail(failed, pytrace=False)  # outside the except: no chained traceback


def _acquire(
    request: pytest.FixtureRequest, lab: Any, selector: str, duration: Any, wait: Any
) -> Any:
    """``lab.lease``, printing the queue position; a LabError fails the test in one line."""
    from labctl.errors import LabError

    plugins = request.config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    capture = plugins.get_plugin("capturemanager")
    shown: list[Any] = []

    def progress(update: dict[str, Any]) -> None:
        position = update.get("position")
        if position is None or shown[-1:] == [position] or reporter is None:
            return
        shown.append(position)
        line = f"[labctl] {request.node.nodeid}: waiting for {selector!r}, position {position}"
        # fixtures run with output captured: a queue position is for the user now
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            reporter.write_line(line + " in the queue")
            reporter.flush()

    try:
        return lab.lease(selector, duration=duration, wait=wait, progress=progress)
    except LabError as exc:
        failed = f"labctl: could not lease {selector!r}: {type(exc).__name__}: {exc.message}"
    pytest.fail(failed, pytrace=False)  # outside the except: no chained traceback
