"""Roles with real processes and keys (issue 15 items 4 and 7): a ``--curve`` broker on
loopback, keys in authorized_keys, the CLI and services as separate processes. Users lease and
act on their leases but cannot force-release or set maintenance; viewers list; a service
registers only the names its key allows; the key's identity is what ``lease list`` and the
audit journal show, and every refusal is an audit row."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from labctl import keys
from labctl.client import BusClient
from labctl.errors import NotAllowed
from labctl.events import EventStream
from labctl.lab import Lab

from ..harness import LabHarness, power_service, wait_until
from .test_curve import CurveKeys, entry, start_curve_broker

#: alice is the admin every harness probe and this process dial as (test_curve's convention)
PEOPLE = {"alice": "admin", "uma": "user", "vic": "viewer"}


@pytest.fixture
def roles_lab(
    tcp_harness: LabHarness, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[LabHarness, CurveKeys]]:
    ck = CurveKeys(tcp_harness.root)
    found = {name: ck.make(name) for name in PEOPLE}
    found["pdu1"] = ck.make("pdu1", tcp_harness.root)  # beside its config, as services keep it
    found["rogue"] = ck.make("rogue", tcp_harness.root)
    ck.keys = found  # type: ignore[attr-defined]
    ck.authorize(
        *(entry(found[name], name, role) for name, role in PEOPLE.items()),
        entry(found["pdu1"], "pdu1", "service", devices=["pdu1.*"]),
        entry(found["rogue"], "rogue", "service", devices=["lab9-*"]),
    )
    start_curve_broker(tcp_harness, ck, monkeypatch)
    tcp_harness.start_service(power_service("pdu1", outlets=2))
    yield tcp_harness, ck


def _as(harness: LabHarness, ck: CurveKeys, name: str, *args: str) -> Any:
    """``labctl ARGS`` as a separate process dialing with ``name``'s key."""
    return harness.run_cli(*args, env=ck.env(name))


def _refusals(lab: Lab, who: str) -> list[dict[str, Any]]:
    rows = lab.client.call("audit", limit=200)
    return [r for r in rows if r["action"] == "not-allowed" and r["who"] == who]


def test_a_user_leases_and_acts_but_cannot_force_release_or_set_maintenance(
    roles_lab: tuple[LabHarness, CurveKeys],
) -> None:
    harness, ck = roles_lab
    admin = harness.lab()  # alice
    with EventStream(admin, "lease.*") as events:  # subscribed through CURVE (User-Id: alice)
        got = _as(harness, ck, "uma", "lease", "acquire", "name=pdu1.1", "-o", "id")
        assert got.returncode == 0, got.stderr
        assert events.wait_for("lease.*.granted", timeout=10)["body"]["holder"] == "uma"
    lease_id = got.stdout.strip()
    on = _as(harness, ck, "uma", "power", "on", "pdu1.1", "--lease", lease_id)
    assert on.returncode == 0, on.stderr  # a user acts on what it leases
    [lease] = admin.client.call("lease.list")["leases"]
    assert lease["holder"] == "uma"  # the key's identity, not user@host:pid
    listed = _as(harness, ck, "vic", "lease", "list")  # a viewer lists
    assert listed.returncode == 0 and "uma" in listed.stdout, listed.stderr

    forced = _as(harness, ck, "uma", "lease", "release", lease["ref"], "--force", "--reason", "x")
    assert forced.returncode == NotAllowed.exit_code == 7
    assert forced.stderr == (
        f"error: uma (user) may not force-release a lease {lease['ref']!r}: admin only\n"
    )
    maint = _as(harness, ck, "uma", "device", "maintenance", "pdu1.2", "on", "--reason", "mine")
    assert maint.returncode == 7
    assert "uma (user) may not set a device's health" in maint.stderr, maint.stderr
    assert admin.devices("name=pdu1.2")[0]["health"] == "good"
    take = _as(harness, ck, "vic", "lease", "acquire", "name=pdu1.2", "-o", "id")
    assert take.returncode == 7 and "vic (viewer) may not take a lease" in take.stderr

    rows = {r["target"]: r for r in _refusals(admin, "uma")}  # who, what, why
    assert rows[lease["ref"]]["why"].startswith("uma (user) may not force-release a lease")
    assert rows["health"]["why"].startswith("uma (user) may not set a device's health")
    assert [r["target"] for r in _refusals(admin, "vic")] == ["lease.acquire"]
    granted = [r for r in admin.client.call("audit", limit=50) if r["action"] == "lease.granted"]
    assert granted[0]["who"] == "uma"

    done = harness.run_cli("lease", "release", lease["ref"], "--force", "--reason", "stuck")
    assert done.returncode == 0, done.stderr  # an admin may
    ended = [r for r in admin.client.call("audit", limit=50) if r["action"] == "lease.ended"]
    assert ended[0]["who"] == "alice" and ended[0]["why"] == "forced stuck"


def test_a_service_cannot_register_a_name_outside_its_keys_globs(
    roles_lab: tuple[LabHarness, CurveKeys],
) -> None:
    harness, ck = roles_lab
    admin = harness.lab()
    cfg = power_service("pdu9", outlets=1, key="rogue.key_secret")  # rogue may: lab9-*
    harness.start_service(cfg, wait=False)
    row = wait_until(lambda: _refusals(admin, "rogue"), 20, "the refused registration")[0]
    assert row["target"] == "pdu9.1"
    assert row["why"] == (
        "rogue (service) may not register devices 'pdu9.1': its key allows only lab9-*"
    )
    assert [d["name"] for d in admin.devices()] == ["pdu1.1", "pdu1.2"]


def test_a_service_key_cannot_lease_and_a_viewer_cannot_act(
    roles_lab: tuple[LabHarness, CurveKeys],
) -> None:
    harness, ck = roles_lab
    server = keys.public_key(str(ck.broker_key))

    def client(name: str, directory: Any) -> BusClient:
        pair = keys.load(directory / f"{name}.key_secret")
        assert pair.secret is not None
        return BusClient(harness.bus, 5.0, keys.ClientKeys(server, pair.public, pair.secret))

    svc = client("pdu1", harness.root)
    try:
        assert [d["name"] for d in svc.call("devices")] == ["pdu1.1", "pdu1.2"]  # it may look
        with pytest.raises(NotAllowed) as refused:
            svc.call("lease.acquire", selector="name=pdu1.1")
        assert refused.value.details == {
            "identity": "pdu1",
            "role": "service",
            "action": "lease.acquire",
        }
    finally:
        svc.close()
    vic = client("vic", ck.cfg)
    try:
        assert vic.call("lease.list") == {"leases": [], "queue": []}
        assert vic.call_device("pdu1.1", "state") == "off"  # read-only: a viewer may
        with pytest.raises(NotAllowed, match=r"vic \(viewer\) may not call a mutating method"):
            vic.call_device("pdu1.1", "on")
        with pytest.raises(NotAllowed, match="admin only"):  # forcing is an admin's too
            vic.call_device("pdu1.1", "state", force="looking")
    finally:
        vic.close()
