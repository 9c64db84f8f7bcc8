"""TasmotaPower against a real mosquitto and a simulated plug in its own process."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import trio

from labctl.errors import DriverError, NotSupported
from labctl.services.power.tasmota import TasmotaPower

from ..drivers.harness import eventually, running, trio_test
from .conftest import Broker, SimPlug, free_port

StartPlug = Callable[..., SimPlug]


def topic() -> str:
    return f"plug-{uuid.uuid4().hex[:8]}"  # brokers are shared: no retained LWT crosstalk


def cfg(broker: Broker, name: str, **over: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": broker.port, "topic": name, "timeout": 2.0, **over}


@trio_test
async def test_on_off_state_confirmed_by_the_plug(mosquitto: Broker, sim_plug: StartPlug) -> None:
    name = topic()
    sim_plug(mosquitto, name)
    async with running(TasmotaPower, cfg(mosquitto, name)) as (drv, rec):
        await rec.wait_for(lambda: rec.is_online is True and rec.states == ["off"])
        assert await drv.on() == "on"
        assert await drv.state() == "on"
        assert await drv.off() == "off"
        assert await drv.state() == "off"
        assert rec.states == ["off", "on", "off"]


@trio_test
async def test_button_press_on_the_plug_is_published(
    mosquitto: Broker, sim_plug: StartPlug
) -> None:
    name = topic()
    plug = sim_plug(mosquitto, name, "--initial", "on")
    async with running(TasmotaPower, cfg(mosquitto, name)) as (drv, rec):
        await rec.wait_for(lambda: rec.states == ["on"])
        plug.press("toggle")
        await rec.wait_for(lambda: rec.states == ["on", "off"])
        assert await drv.state() == "off"


@trio_test
async def test_plug_death_and_return_follow_the_lwt(mosquitto: Broker, sim_plug: StartPlug) -> None:
    name = topic()
    plug = sim_plug(mosquitto, name)
    async with running(TasmotaPower, cfg(mosquitto, name)) as (drv, rec):
        await rec.wait_for(lambda: rec.is_online is True)
        await trio.to_thread.run_sync(plug.kill)
        await rec.wait_for(lambda: rec.is_online is False)
        assert rec.online[-1] == (False, f"plug reports Offline (tele/{name}/LWT)")
        with pytest.raises(DriverError, match="plug is offline"):
            await drv.on()  # fails at once instead of waiting for a confirmation
        await trio.to_thread.run_sync(plug.start)
        await rec.wait_for(lambda: rec.is_online is True)
        assert await drv.on() == "on"


@trio_test
async def test_read_reports_energy_telemetry(mosquitto: Broker, sim_plug: StartPlug) -> None:
    name = topic()
    sim_plug(mosquitto, name, "--meter", "--tele-period", "0.05", "--initial", "on")
    async with running(TasmotaPower, cfg(mosquitto, name)) as (drv, _):

        async def powered() -> dict[str, float]:
            reading = await drv.read()
            assert reading["power"] > 0
            return reading

        reading = await eventually(powered, retry_on=(NotSupported, AssertionError))
        assert reading["voltage"] == 230.0
        assert reading["power"] == 11.5
        assert reading["current"] == pytest.approx(0.05, abs=1e-3)
        await drv.off()
        await eventually(lambda: _assert_power(drv, 0.0))


async def _assert_power(drv: TasmotaPower, watts: float) -> None:
    assert (await drv.read())["power"] == watts


@trio_test
async def test_read_without_a_meter_is_not_supported(
    mosquitto: Broker, sim_plug: StartPlug
) -> None:
    name = topic()
    sim_plug(mosquitto, name)
    async with running(TasmotaPower, cfg(mosquitto, name)) as (drv, _):
        with pytest.raises(NotSupported, match="no ENERGY telemetry"):
            await drv.read()


@trio_test
async def test_credentials_right_and_wrong(mosquitto_auth: Broker, sim_plug: StartPlug) -> None:
    name = topic()
    sim_plug(mosquitto_auth, name, "--username", "plug", "--password", "plugpw")
    wrong = cfg(mosquitto_auth, name, username="lab", password="guess", timeout=1.0)
    async with running(TasmotaPower, wrong) as (drv, rec):
        with pytest.raises(DriverError, match="refused the connection: Not authorized"):
            await drv.on()
        await rec.wait_for(lambda: rec.is_online is False)
    right = cfg(mosquitto_auth, name, username="lab", password="s3cret")
    async with running(TasmotaPower, right) as (drv, _):
        assert await drv.on() == "on"


@trio_test
async def test_tls_with_the_right_ca_and_without(
    mosquitto_tls: Broker, sim_plug: StartPlug
) -> None:
    name = topic()
    sim_plug(mosquitto_tls, name)  # the plug uses the plain listener
    ca = str(mosquitto_tls.dir / "ca.pem")
    tls = cfg(mosquitto_tls, name, port=mosquitto_tls.tls_port, tls=True, ca_certs=ca)
    async with running(TasmotaPower, tls) as (drv, _):
        assert await drv.on() == "on"
    untrusted = cfg(mosquitto_tls, name, port=mosquitto_tls.tls_port, tls=True, timeout=1.0)
    async with running(TasmotaPower, untrusted) as (drv, _):
        with pytest.raises(DriverError, match="certificate verify failed"):
            await drv.state()


@trio_test
async def test_no_plug_on_the_topic_times_out_with_a_hint(mosquitto: Broker) -> None:
    async with running(TasmotaPower, cfg(mosquitto, topic(), timeout=0.3)) as (drv, _):
        with pytest.raises(DriverError, match=r"did not confirm ON .* within 0.3s; no LWT seen"):
            await drv.on()


@trio_test
async def test_broker_down_is_a_clear_error() -> None:
    down = {"host": "127.0.0.1", "port": free_port(), "topic": "nobody", "timeout": 0.5}
    async with running(TasmotaPower, down) as (drv, rec):
        with pytest.raises(
            DriverError, match=r"cannot connect to MQTT broker .*: Connection refused"
        ):
            await drv.state()
        await rec.wait_for(lambda: rec.is_online is False)
        assert "Connection refused" in rec.online[-1][1]


@trio_test
async def test_broker_restart_is_survived(own_mosquitto: Broker, sim_plug: StartPlug) -> None:
    name = topic()
    sim_plug(own_mosquitto, name)
    async with running(TasmotaPower, cfg(own_mosquitto, name)) as (drv, rec):
        await rec.wait_for(lambda: rec.is_online is True)
        await trio.to_thread.run_sync(own_mosquitto.stop)
        # mosquitto delivers the plug's will as it shuts down, and we lose the broker
        await rec.wait_for(lambda: any("lost the connection" in why for _, why in rec.online))
        assert rec.is_online is False
        await trio.to_thread.run_sync(own_mosquitto.start, own_mosquitto.port)
        # both reconnect by themselves; the plug publishes its LWT Online again
        await rec.wait_for(lambda: rec.is_online is True, timeout=10)
        assert await drv.on() == "on"


@trio_test
async def test_multi_relay_and_custom_topics(mosquitto: Broker, sim_plug: StartPlug) -> None:
    name = topic()
    sim_plug(mosquitto, name, "--relays", "2")
    async with running(TasmotaPower, cfg(mosquitto, name, relay=2)) as (drv, rec):
        assert await drv.on() == "on"
        assert await drv.state() == "on"
    custom = cfg(mosquitto, name, relay=1, command_topic="cmnd/{topic}/{power}",
                 state_topic="stat/{topic}/{power}")  # fmt: skip
    async with running(TasmotaPower, custom) as (drv, _):
        assert await drv.state() == "off"  # relay 1 was not touched


def test_bad_topic_template_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="only {topic} and {power}"):
        TasmotaPower.Config(host="h", topic="t", command_topic="cmnd/{device}/POWER")
