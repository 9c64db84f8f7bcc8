"""What a script author sees of the SDK (issue 9.9/9.22): names, types, reprs, errors."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

import labctl
from labctl.aio import AsyncLab
from labctl.errors import DeviceNotFound
from labctl.lease_view import DeviceInfo

from .harness import LabHarness, power_service


@pytest.fixture
def lab1(harness: LabHarness) -> LabHarness:
    harness.start_broker()
    harness.start_service(power_service("pdu1", outlets=2))
    return harness


def test_the_package_is_typed_and_lists_its_entry_points() -> None:
    assert (Path(labctl.__file__).parent / "py.typed").is_file()
    assert {"Lab", "AsyncLab", "LabError"} <= set(dir(labctl))
    out = subprocess.run(
        [sys.executable, "-c", "import labctl, sys; labctl.Lab; print('labctl.aio' in sys.modules)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout == "False\n"  # still lazy: Lab does not pull in the trio SDK


def test_devices_are_typed_and_still_dicts(lab1: LabHarness) -> None:
    lab = lab1.lab()
    with lab.lease("dut=rpi4-01") as lease:
        (dev,) = lab.devices("name=pdu1.1")
        assert isinstance(dev, DeviceInfo)
        assert (dev.name, dev.kind, dev.online, dev.health) == ("pdu1.1", "power", True, "good")
        assert dev.labels["board"] == "rpi4" and dev["labels"] == dev.labels
        assert dev.lease == lease.ref != lease.id
        assert "pdu1.1" in repr(dev)


def test_lease_repr_and_errors_never_show_the_id(lab1: LabHarness) -> None:
    lab = lab1.lab()
    with lab.lease("dut=rpi4-01") as lease:
        assert repr(lease) == f"<Lease {lease.ref} devices=['pdu1.1']>"
        with pytest.raises(DeviceNotFound) as missing:
            lease["nosuch"]
        assert lease.id not in str(missing.value) and lease.ref in str(missing.value)
        with pytest.raises(AttributeError) as no_kind:
            _ = lease.serial
        assert lease.id not in str(no_kind.value)


def test_async_lease_repr_and_device_info(lab1: LabHarness) -> None:
    async def main() -> None:
        async with AsyncLab(lab1.bus) as lab, lab.lease("dut=rpi4-02") as lease:
            assert repr(lease) == f"<AsyncLease {lease.ref} devices=['pdu1.2']>"
            (dev,) = await lab.devices("name=pdu1.2")
            assert dev.lease == lease.ref
            with pytest.raises(DeviceNotFound):
                lease["nosuch"]

    trio.run(main)


def test_events_iteration_ends_after_a_quiet_timeout(lab1: LabHarness) -> None:
    lab = lab1.lab()
    started = time.monotonic()
    assert list(lab.events("nothing.ever.*", timeout=0.3)) == []
    assert time.monotonic() - started < 5


def test_every_public_method_of_the_sdk_classes_says_what_it_does() -> None:
    import inspect

    from labctl.aio import AsyncDevice, AsyncLease
    from labctl.lab import Device, Lab, Lease

    missing = [
        f"{cls.__name__}.{name}"
        for cls in (Lab, AsyncLab, Lease, AsyncLease, Device, AsyncDevice, DeviceInfo)
        for name, member in vars(cls).items()
        if not name.startswith("_")
        and (inspect.isfunction(member) or isinstance(member, property))
        and not inspect.getdoc(member)
    ]
    assert missing == []
    assert inspect.signature(Device.console).return_annotation == "Console"
