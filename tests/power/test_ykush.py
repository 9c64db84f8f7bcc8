"""YkushPower through real pyusb code on a fake backend (see fake_usb.py for its limits)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from labctl.errors import DriverError
from labctl.services.bridges import usb as usb_bridge
from labctl.services.power.ykush import YkushPower

from ..drivers.harness import running, trio_test
from .fake_usb import FakeBackend, FakeYkush


@pytest.fixture(autouse=True)
def forget_hubs() -> Iterator[None]:
    yield
    usb_bridge.forget_all()  # opened devices are shared per process


@pytest.fixture
def hubs() -> tuple[FakeBackend, FakeYkush, FakeYkush]:
    a = FakeYkush("YK10001", address=5)
    b = FakeYkush("YK10002", address=6)
    return FakeBackend([a, b]), a, b


@trio_test
async def test_selects_hub_by_serial_and_switches_each_port(hubs: tuple) -> None:
    backend, a, b = hubs
    for port in (1, 2, 3):
        cfg = {"serial": "YK10002", "port": port}
        async with running(YkushPower, cfg, backend=backend) as (drv, rec):
            assert await drv.on() == "on"
            assert b.ports[port - 1] is True
            assert await drv.state() == "on"
            assert await drv.off() == "off"
            assert await drv.state() == "off"
            # the driver may first publish the state it found at start
            assert rec.states in (["on", "off"], ["off", "on", "off"])
    assert a.commands == []  # the other hub was never touched
    # port 1 up, then its status read back (a status read at start may come first)
    first_up = b.commands.index(0x11)
    assert 0x21 in b.commands[first_up + 1 :]


@trio_test
async def test_all_ports(hubs: tuple) -> None:
    backend, a, _ = hubs
    async with running(YkushPower, {"serial": "YK10001", "port": "all"}, backend=backend) as (
        drv,
        _,
    ):
        assert await drv.on() == "on"
        assert a.ports == [True, True, True]
        assert await drv.state() == "on"
        a.ports[1] = False  # one port down: "all" is not on
        assert await drv.state() == "off"
        assert await drv.off() == "off"
        assert a.ports == [False, False, False]


@trio_test
async def test_ports_of_one_hub_share_one_open_handle(hubs: tuple) -> None:
    backend, a, _ = hubs
    drivers = [YkushPower(*_ctx_and_cfg(port), backend=backend) for port in (1, 2, 3)]
    for drv in drivers:
        await drv.on()
    assert a.ports == [True, True, True]
    assert a.opens == 1


def _ctx_and_cfg(port: int) -> tuple:
    from labctl.services.driver import DeviceContext

    ctx = DeviceContext(f"hub.{port}", lambda *_: None, lambda *_: None)
    return ctx, YkushPower.Config(serial="YK10001", port=port)


@trio_test
async def test_serial_is_optional_with_exactly_one_hub() -> None:
    only = FakeYkush("YK77")
    async with running(YkushPower, {"port": 1}, backend=FakeBackend([only])) as (drv, _):
        assert await drv.on() == "on"
        assert only.ports[0]


@trio_test
async def test_several_hubs_without_serial_is_an_error(hubs: tuple) -> None:
    backend, _, _ = hubs
    async with running(YkushPower, {"port": 1}, backend=backend) as (drv, _):
        with pytest.raises(
            DriverError, match=r"2 YKUSH hubs found \(YK10001, YK10002\); set 'serial'"
        ):
            await drv.on()


@trio_test
async def test_hub_not_found(hubs: tuple) -> None:
    backend, _, _ = hubs
    async with running(YkushPower, {"serial": "YK404", "port": 1}, backend=backend) as (drv, _):
        with pytest.raises(
            DriverError, match=r"no YKUSH hub with serial 'YK404' \(found: YK10001, YK10002\)"
        ):
            await drv.state()
    async with running(YkushPower, {"port": 1}, backend=FakeBackend([])) as (drv, _):
        with pytest.raises(DriverError, match=r"no YKUSH hub at all \(found: none\)"):
            await drv.state()


@trio_test
async def test_usb_timeout_is_an_error_and_the_driver_recovers(hubs: tuple) -> None:
    backend, a, _ = hubs
    cfg = {"serial": "YK10001", "port": 2, "timeout": 0.1}
    async with running(YkushPower, cfg, backend=backend) as (drv, _):
        a.silent = True
        with pytest.raises(
            DriverError, match=r"YKUSH YK10001 did not answer command 0x12 within 0.1s"
        ):
            await drv.on()
        a.silent = False
        assert await drv.on() == "on"


@trio_test
async def test_permission_denied_names_the_fix() -> None:
    locked = FakeYkush("YK1", deny_open=True)
    async with running(YkushPower, {"port": 1}, backend=FakeBackend([locked])) as (drv, _):
        with pytest.raises(DriverError, match=r"permission denied \(add a udev rule\)"):
            await drv.on()
    cfg = {"serial": "YK1", "port": 1}
    async with running(YkushPower, cfg, backend=FakeBackend([locked])) as (drv, _):
        with pytest.raises(DriverError, match="serial unreadable.*udev rule"):
            await drv.on()


@trio_test
async def test_early_firmware_answers_are_understood() -> None:
    old = FakeYkush("YK0042", legacy=True, pid=0x0042)
    async with running(YkushPower, {"port": 3}, backend=FakeBackend([old])) as (drv, _):
        assert await drv.on() == "on"
        assert await drv.state() == "on"
        assert await drv.off() == "off"
        assert await drv.state() == "off"


def test_module_level_backend_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = FakeBackend([])
    monkeypatch.setattr(usb_bridge, "BACKEND", backend)
    drv = YkushPower(*_ctx_and_cfg(1))
    assert drv.backend is backend


@pytest.mark.parametrize("port", [0, 4, "both"])
def test_bad_port_is_a_config_error(port: object) -> None:
    with pytest.raises(ValueError, match="port"):
        YkushPower.Config(port=port)
