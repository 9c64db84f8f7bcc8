"""The trio SDK and the pytest plugin against a real lab."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading

import pytest
import trio

from labctl.aio import AsyncLab
from labctl.errors import DeviceBusy, NoMatch

from .harness import LabHarness, power_service

pytest_plugins = ["pytester"]


@pytest.fixture
def lab1(harness: LabHarness) -> LabHarness:
    harness.start_broker()
    harness.start_service(power_service("pdu1", outlets=2))
    return harness


def test_trio_sdk_queries_leases_and_calls(lab1: LabHarness) -> None:
    async def main() -> None:
        async with AsyncLab(lab1.bus) as lab:
            assert [d["name"] for d in await lab.devices("dut=rpi4-01")] == ["pdu1.1"]
            async with lab.lease("dut=rpi4-01") as lease:
                assert await lease.power.on() == "on"
                assert await (await lab.device("pdu1.1")).state() == "on"
                with pytest.raises(DeviceBusy):
                    async with lab.lease("dut=rpi4-01"):
                        pass
                # concurrent calls share one socket and are matched by request id
                async with trio.open_nursery() as nursery:
                    for _ in range(20):
                        nursery.start_soon(lease["pdu1.1"].state)
            with pytest.raises(NoMatch):
                async with lab.lease("dut=none"):
                    pass
            assert (await lab.devices("dut=rpi4-01"))[0]["lease"] is None

    trio.run(main)


def test_pytest_plugin_leases_per_marker_and_releases(
    lab1: LabHarness, pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.lab("dut=rpi4-02", duration="5m")
        def test_on(lease, lab):
            assert lease.devices == ["pdu1.2"]
            assert lease.power.on() == "on"
            assert lab.devices("name=pdu1.2")[0]["lease"] == lease.ref

        @pytest.mark.lab("dut=rpi4-02")
        def test_fails_but_releases(lease):
            raise AssertionError("boom")

        def test_needs_marker(lease):
            pass
        """
    )
    result = pytester.runpytest_subprocess("--lab-broker", lab1.bus, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1, errors=1)
    result.stdout.fnmatch_lines(["*needs @pytest.mark.lab*"])
    assert lab1.lab().devices("name=pdu1.2")[0]["lease"] is None
    with lab1.lab().lease("dut=rpi4-02"):
        pass


def test_a_kind_the_lease_lacks_is_a_clear_error(lab1: LabHarness) -> None:
    with (
        lab1.lab().lease("name in (pdu1.1)") as lease,
        pytest.raises(AttributeError, match=r"holds no 'serial' device \(it holds \['pdu1.1'\]\)"),
    ):
        _ = lease.serial


PLUGIN_TESTS = """
import os
import pytest

@pytest.mark.lab("board=rpi4")
def test_uses_the_shell_lease(lease):
    assert lease.id == os.environ["LABCTL_LEASE"]
    assert lease.devices == ["pdu1.1"]

@pytest.mark.lab("dut=none")
def test_no_match(lease):
    pass
"""


def test_inside_a_shell_a_marker_the_shell_lease_satisfies_uses_it(
    lab1: LabHarness, pytester: pytest.Pytester
) -> None:
    path = pytester.makepyfile(PLUGIN_TESTS)
    r = lab1.run_cli(
        "shell", "dut=rpi4-01", "--", sys.executable, "-m", "pytest", str(path),
        "-p", "no:cacheprovider", "--lab-wait", "0", timeout=60,
    )  # fmt: skip
    assert "1 passed, 1 error" in r.stdout, r.stdout + r.stderr
    # a lease that cannot be had is one line, not a traceback through the plugin
    assert "labctl: could not lease 'dut=none': NoMatch: " in r.stdout
    assert "pytest_plugin.py" not in r.stdout and "During handling" not in r.stdout
    assert lab1.lab().devices("name=pdu1.2")[0]["lease"] is None  # no second board taken


def test_a_marked_test_queues_by_default_and_prints_its_position(
    lab1: LabHarness, pytester: pytest.Pytester
) -> None:
    path = pytester.makepyfile(
        """
        import pytest

        @pytest.mark.lab("dut=rpi4-02")
        def test_waits(lease):
            assert lease.devices == ["pdu1.2"]
        """
    )
    lab = lab1.lab()
    held = lab.lease("dut=rpi4-02")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", str(path), "-p", "no:cacheprovider", "--lab-broker",
         lab1.bus],
        env={**lab1.env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout or ()])
    reader.start()
    seen: list[str] = []
    try:
        while "waiting for 'dut=rpi4-02', position 1 in the queue" not in "".join(seen):
            try:
                seen.append(lines.get(timeout=30))
            except queue.Empty:
                raise AssertionError("no queue position printed:\n" + "".join(seen)) from None
        held.release()
        assert proc.wait(30) == 0, "".join(seen)
        reader.join(10)
        seen.extend(lines.queue)
        assert "1 passed" in "".join(seen)
    finally:
        proc.kill()
        proc.wait()
