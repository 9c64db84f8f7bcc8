"""SnmpPower against a real Debian snmpd serving emulated APC and Raritan outlet tables."""

from __future__ import annotations

import json
from typing import Any

import pydantic
import pytest
import trio

from labctl.errors import DriverError
from labctl.services.power.snmp import SnmpPower

from ..drivers.harness import running, trio_test
from ..harness import LabHarness, wait_until
from .conftest import AUTH_KEY, PRIV_KEY, V3_USERS, SnmpAgent


def cfg(agent: SnmpAgent, **over: Any) -> dict[str, Any]:
    base = {"host": agent.host, "port": agent.port, "version": "2c", "community": "private",
            "model": "apc", "outlet": 1, "timeout": 1.0, "retries": 0}  # fmt: skip
    return {**base, **over}


def v3(user: str) -> dict[str, Any]:
    auth, priv = V3_USERS[user]
    out: dict[str, Any] = {"version": "3", "user": user, "auth_protocol": auth}
    if auth != "none":
        out["auth_key"] = AUTH_KEY
    if priv != "none":
        out |= {"priv_protocol": priv, "priv_key": PRIV_KEY}
    return out


async def switch_and_read(drv: SnmpPower, agent: SnmpAgent, table: str, outlet: int) -> None:
    """on, state, off, state; checks the agent's backing store as well as the read-back."""
    assert await drv.on() == "on"
    assert agent.outlet(table, outlet)
    assert await drv.state() == "on"
    assert await drv.off() == "off"
    assert not agent.outlet(table, outlet)
    assert await drv.state() == "off"


@pytest.mark.parametrize("version", ["1", "2c"])
@trio_test
async def test_apc_outlet_switches_with_community(snmpd: SnmpAgent, version: str) -> None:
    async with running(SnmpPower, cfg(snmpd, version=version, outlet=3)) as (drv, rec):
        await switch_and_read(drv, snmpd, "apc", 3)
        assert rec.states == ["on", "off"]


@pytest.mark.parametrize("user", list(V3_USERS))
@trio_test
async def test_v3_user_switches_raritan_outlet(snmpd: SnmpAgent, user: str) -> None:
    outlet = list(V3_USERS).index(user) % 8 + 1
    async with running(SnmpPower, cfg(snmpd, model="raritan", outlet=outlet, **v3(user))) as (
        drv,
        _,
    ):
        await switch_and_read(drv, snmpd, "raritan", outlet)


@trio_test
async def test_raritan_px1_and_masterswitch_style_single_oid(snmpd: SnmpAgent) -> None:
    async with running(SnmpPower, cfg(snmpd, model="raritan_px1", outlet=4)) as (drv, _):
        await switch_and_read(drv, snmpd, "px1", 4)


@trio_test
async def test_generic_template_with_own_oids_and_values(snmpd: SnmpAgent) -> None:
    generic = cfg(
        snmpd,
        model="generic",
        outlet=5,
        oid=".1.3.6.1.4.1.318.1.1.12.3.3.1.1.4.{outlet}",
        on_value=1,
        off_value=2,
        state_oid=".1.3.6.1.4.1.318.1.1.12.3.5.1.1.4.{outlet}",
    )
    async with running(SnmpPower, generic) as (drv, _):
        await switch_and_read(drv, snmpd, "apc", 5)


@trio_test
async def test_polling_publishes_changes_made_outside_labctl(snmpd: SnmpAgent) -> None:
    snmpd.set_outlet("apc", 6, False)
    async with running(SnmpPower, cfg(snmpd, outlet=6, poll_interval=0.05)) as (drv, rec):
        await rec.wait_for(lambda: rec.states == ["off"])
        # someone else switches it, over SNMP with the net-snmp CLI
        oid = ".1.3.6.1.4.1.318.1.1.12.3.3.1.1.4.6"
        await trio.run_process(snmpd.cli("snmpset", oid, "i", "1"), env=snmpd.env,
                               capture_stdout=True)  # fmt: skip
        await rec.wait_for(lambda: rec.states == ["off", "on"])
        # ... and someone presses the front-panel button
        snmpd.set_outlet("apc", 6, False)
        await rec.wait_for(lambda: rec.states == ["off", "on", "off"])
        assert rec.online == [(True, "")]
        assert await drv.state() == "off"


@trio_test
async def test_wrong_community_is_a_clear_error(snmpd: SnmpAgent) -> None:
    async with running(SnmpPower, cfg(snmpd, community="wrong", timeout=0.3)) as (drv, _):
        with pytest.raises(DriverError, match=r"did not answer \(timeout 0.3s.*community 'wrong'"):
            await drv.on()
    async with running(SnmpPower, cfg(snmpd)) as (drv, _):  # the right one still works
        assert await drv.on() == "on"


@trio_test
async def test_read_only_community_may_not_switch(snmpd: SnmpAgent) -> None:
    async with running(SnmpPower, cfg(snmpd, community="public")) as (drv, _):
        assert await drv.state() in ("on", "off")
        with pytest.raises(DriverError, match=r"community 'public' may not write .* \(noAccess\)"):
            await drv.on()


@trio_test
async def test_wrong_v3_auth_key_is_an_authentication_failure(snmpd: SnmpAgent) -> None:
    bad = v3("u_sha_aes") | {"auth_key": "not-the-key"}
    async with running(SnmpPower, cfg(snmpd, **bad)) as (drv, _):
        with pytest.raises(DriverError, match="authentication failure for user 'u_sha_aes'"):
            await drv.on()


@trio_test
async def test_wrong_v3_priv_key_times_out_and_says_why(snmpd: SnmpAgent) -> None:
    bad = v3("u_sha_aes") | {"priv_key": "not-the-key"}
    async with running(SnmpPower, cfg(snmpd, timeout=0.3, **bad)) as (drv, _):
        with pytest.raises(DriverError, match="wrong priv_key/priv_protocol for user 'u_sha_aes'"):
            await drv.state()


@trio_test
async def test_unknown_v3_user_and_missing_security_level(snmpd: SnmpAgent) -> None:
    async with running(SnmpPower, cfg(snmpd, **(v3("u_sha") | {"user": "nobody"}))) as (drv, _):
        with pytest.raises(DriverError, match="does not know SNMPv3 user 'nobody'"):
            await drv.state()
    # u_sha512_aes must use privacy; without it snmpd denies access
    weaker = v3("u_sha512_aes") | {"priv_protocol": "none", "priv_key": None}
    async with running(SnmpPower, cfg(snmpd, **weaker)) as (drv, _):
        with pytest.raises(DriverError, match="user 'u_sha512_aes' may not read"):
            await drv.state()


@trio_test
async def test_unknown_outlet_is_reported(snmpd: SnmpAgent) -> None:
    async with running(SnmpPower, cfg(snmpd, outlet=42)) as (drv, _):
        with pytest.raises(DriverError, match=r"has no object .*\.42 \(wrong model"):
            await drv.state()


@trio_test
async def test_agent_down_then_back_is_reported_and_recovered(own_snmpd: SnmpAgent) -> None:
    agent = own_snmpd
    async with running(SnmpPower, cfg(agent, outlet=2, poll_interval=0.05, timeout=0.3)) as (
        drv,
        rec,
    ):
        assert await drv.on() == "on"
        await rec.wait_for(lambda: rec.is_online is True)
        agent.stop()
        await rec.wait_for(lambda: rec.is_online is False)
        assert "refused the request (nothing listens there)" in rec.online[-1][1]
        with pytest.raises(DriverError, match=f"127.0.0.1:{agent.port} refused"):
            await drv.off()
        agent.start(port=agent.port)  # same port, state files kept
        await rec.wait_for(lambda: rec.is_online is True)
        assert await drv.off() == "off"
        assert not agent.outlet("apc", 2)


def test_unresolvable_host_is_listed_offline_before_any_call(harness: LabHarness) -> None:
    harness.start_broker()
    service = {
        "service": "pduX", "kind": "power", "driver": "snmp", "labels": {"pdu": "X"},
        "config": {"host": "nosuch.invalid", "model": "apc", "timeout": 0.3, "retries": 0},
        "devices": [{"name": "pduX.1", "config": {"outlet": 1}},
                    {"name": "pduX.2", "config": {"outlet": 2, "poll_interval": 0.05}}],
    }  # fmt: skip
    svc = harness.start_service(service, wait=False)  # its devices never come online
    lab = harness.lab()
    wait_until(
        lambda: (devs := lab.devices("pdu=X")) and all(d["online"] is False for d in devs),
        10,
        "the first check to mark both outlets offline",
    )
    res = harness.run_cli("devices", "-o", "json")
    assert res.returncode == 0, res.stderr
    devs = {d["name"]: d for d in json.loads(res.stdout)}
    assert sorted(devs) == ["pduX.1", "pduX.2"]
    for name in ("pduX.1", "pduX.2"):
        assert devs[name]["online"] is False
        assert devs[name]["offline_reason"] == f"{name}: host nosuch.invalid does not resolve"
        assert devs[name]["status"] is None  # no state was ever read
    assert svc.alive()


@trio_test
async def test_unpolled_outlet_is_checked_at_start_and_online_once_the_agent_answers(
    own_snmpd: SnmpAgent,
) -> None:
    agent = own_snmpd
    agent.stop()
    async with running(SnmpPower, cfg(agent, outlet=7, timeout=0.3)) as (drv, rec):
        await rec.wait_for(lambda: rec.is_online is False)
        assert "refused the request (nothing listens there)" in rec.online[-1][1]
        agent.start(port=agent.port)
        await rec.wait_for(lambda: rec.is_online is True)
        assert rec.online[-1] == (True, "") and len(rec.states) == 1
        assert await drv.state() == rec.states[0]


@trio_test
async def test_timeout_on_silent_agent_and_cancellation_is_prompt(snmpd: SnmpAgent) -> None:
    slow = cfg(snmpd, community="silent", timeout=5.0, retries=0)
    async with running(SnmpPower, slow) as (drv, _):
        with trio.move_on_after(0.2) as scope:
            await drv.state()
        assert scope.cancelled_caught
        # the cancelled request left the shared loop healthy
    async with running(SnmpPower, cfg(snmpd)) as (drv, _):
        before = trio.current_time()
        assert await drv.state() in ("on", "off")
        assert trio.current_time() - before < 1.0


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"version": "3"}, "version 3 needs 'user'"),
        ({"version": "3", "user": "u", "auth_protocol": "SHA", "auth_key": "short"}, "at least 8"),
        (
            {"version": "3", "user": "u", "priv_protocol": "AES", "priv_key": "x" * 8},
            "needs an auth",
        ),
        ({"auth_protocol": "SHA-999"}, "auth_protocol must be one of"),
        ({"model": "generic"}, "needs 'oid'"),
        ({"model": "apc", "outlet": None}, "needs 'outlet'"),
        ({"model": "apc", "oid": ".1.2"}, "only apply to model 'generic'"),
        ({"colour": "red"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_config_fails_early_with_the_field(bad: dict[str, Any], message: str) -> None:
    base = {"host": "127.0.0.1", "model": "apc", "outlet": 1}
    with pytest.raises(pydantic.ValidationError, match=message):
        SnmpPower.Config(**(base | bad))


def test_config_accepts_yaml_spellings() -> None:
    c = SnmpPower.Config(host="h", model="apc", outlet=1, version=1, auth_protocol="sha256")
    assert (c.version, c.auth_protocol) == ("1", "SHA-256")
    c = SnmpPower.Config(host="h", model="apc", outlet=1, version="v2c", priv_protocol="aes128")
    assert (c.version, c.priv_protocol) == ("2c", "AES")
