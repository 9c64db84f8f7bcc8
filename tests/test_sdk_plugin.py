"""The trio SDK and the pytest plugin against a real lab."""

from __future__ import annotations

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
