"""The roles policy and its parts without a broker process: the table covers every broker
call, roles are looked up at each check, refusals are journaled but bounded, the identity
rule, and how event subscriptions are charged when libzmq cleans up a closed connection.
(tests/security/test_roles.py and test_limits.py run the same with real processes.)"""

from __future__ import annotations

from typing import Any

import pytest

from labctl.broker.access import POLICY, RefusalJournal, Roles
from labctl.broker.auth import KeyEntry
from labctl.broker.calls import BrokerCalls
from labctl.broker.events import Subscriptions
from labctl.broker.peers import Peers
from labctl.errors import NotAllowed


class Keys:
    """A stand-in for AuthorizedKeys: identity -> entry, edited in place; each identity's
    key (a connection's User-Id) is its name here."""

    def __init__(self, *entries: KeyEntry) -> None:
        self.by_identity = {e.identity: e for e in entries}

    def entry(self, identity: str) -> KeyEntry | None:
        return self.by_identity.get(identity)

    def for_key(self, key: str) -> KeyEntry | None:
        return self.by_identity.get(key)


class Frame:
    """What Peers reads from a received zmq.Frame: its connection's metadata."""

    def __init__(self, **props: str) -> None:
        self.props = {k.replace("_", "-"): v for k, v in props.items()}

    def get(self, name: str) -> str:
        if name not in self.props:
            import zmq

            raise zmq.ZMQError(22)
        return self.props[name]


def _roles(keys: Keys | None) -> tuple[Roles, Peers, list[tuple[str, ...]]]:
    peers = Peers(keys)  # type: ignore[arg-type]
    rows: list[tuple[str, ...]] = []
    return Roles(peers, lambda *row: rows.append(row)), peers, rows


def test_every_broker_call_has_a_row_in_the_policy_table() -> None:
    calls = BrokerCalls(*[None] * 6, hub=None, welcome=None)  # type: ignore[arg-type]
    assert set(calls.table) <= set(POLICY)
    roles = {r for allowed, _ in POLICY.values() for r in allowed}
    assert roles == {"admin", "user", "service", "viewer"}
    assert all(allowed >= {"admin"} for allowed, _ in POLICY.values())  # admins: everything


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        ("viewer", {"devices", "lease.list", "audit", "method", "stream", "sync"}),
        ("user", {"lease.acquire", "lease.release", "method.mutating", "stream.write"}),
        ("service", {"register", "publish", "devices"}),
    ],
)
def test_each_role_may_do_what_issue_15_says_and_no_admin_action(
    role: str, allowed: set[str]
) -> None:
    roles, peers, _ = _roles(Keys(KeyEntry("k", role, ("x*",) if role == "service" else ())))
    peers.known[b"r"] = peers.key_of[b"r"] = "k"
    for action in allowed:
        roles.check(b"r", action)
    for action in ("lease.release.force", "health", "device.remove", "force"):
        with pytest.raises(NotAllowed, match=f"k \\({role}\\) may not .*: admin only"):
            roles.check(b"r", action)


def test_open_broker_everyone_is_admin_and_nothing_is_checked() -> None:
    roles, peers, rows = _roles(None)
    peers.learn(b"r", Frame(X_Labctl_User="bob@h:1"))
    assert not roles.enforced and peers.role(b"r") == "admin"
    roles.check(b"r", "device.remove")
    roles.check_register(b"r", ["anything"], {})
    assert rows == []


def test_roles_are_read_at_each_check_and_a_removed_key_may_do_nothing() -> None:
    keys = Keys(KeyEntry("uma", "user"))
    roles, peers, rows = _roles(keys)
    peers.learn(b"r", Frame(User_Id="uma", X_Labctl_User="admin@forged:1"))
    assert peers.identity(b"r") == "uma"  # with CURVE on, a declared name is not read
    with pytest.raises(NotAllowed) as refused:
        roles.check(b"r", "health", "pdu1.1")
    assert refused.value.details == {"identity": "uma", "role": "user", "action": "health"}
    assert rows == [("uma", "not-allowed", "pdu1.1", str(refused.value))]
    keys.by_identity["uma"] = KeyEntry("uma", "admin")  # authorized_keys edited: applies now
    roles.check(b"r", "health", "pdu1.1")
    del keys.by_identity["uma"]
    with pytest.raises(NotAllowed, match="no longer in authorized_keys"):
        roles.check(b"r", "devices")


def test_a_service_registers_only_names_matching_its_globs() -> None:
    keys = Keys(
        KeyEntry("exp", "service", ("lab1-*", "dut-3-power")),
        KeyEntry("root", "admin"),
        KeyEntry("uma", "user"),
    )
    roles, peers, rows = _roles(keys)
    for ident, who in ((b"s", "exp"), (b"a", "root"), (b"u", "uma")):
        peers.known[ident] = peers.key_of[ident] = who
    roles.check_register(b"s", ["lab1-a", "dut-3-power"], {})
    roles.check_register(b"a", ["whatever"], {})
    with pytest.raises(
        NotAllowed, match="may not register devices 'dut-4-power': its key allows"
    ) as e:
        roles.check_register(b"s", ["lab1-b", "dut-4-power"], {})
    assert e.value.details["device"] == "dut-4-power"
    with pytest.raises(NotAllowed, match=r"uma \(user\) may not register devices: needs the role"):
        roles.check_register(b"u", ["lab1-a"], {})
    assert [r[2] for r in rows] == ["dut-4-power", "register"]


def test_refusals_cannot_flood_the_journal() -> None:
    now = [0.0]
    rows: list[tuple[str, ...]] = []
    journal = RefusalJournal(lambda *row: rows.append(row), clock=lambda: now[0])
    for _ in range(10_000):  # one identity hammering one action
        journal.record("mallory", "health", "pdu1.1", "no")
    assert len(rows) == 1
    now[0] += 1.0
    journal.record("mallory", "health", "pdu1.1", "no")
    assert rows[-1][3] == "no (+9999 more not journaled)"
    for i in range(10_000):  # many identities at once: the overall rate holds
        journal.record(f"m{i}", "health", "", "no")
    assert len(rows) <= 2 + RefusalJournal.BURST
    assert journal.refused == 20_001


class FakeXPUB:
    """Records what Subscriptions applies (setsockopt on the last message's connection)."""

    def __init__(self) -> None:
        self.applied: list[tuple[int, bytes]] = []

    def setsockopt(self, option: int, value: bytes) -> None:
        self.applied.append((option, value))


def test_cleanup_of_a_closed_connection_is_charged_to_whoever_alone_holds_a_topic_of_it() -> None:
    subs = Subscriptions(FakeXPUB(), lambda f: "", lambda who, n: None, maximum=3)  # type: ignore[arg-type]
    for who, topic in (("a", b"device."), ("a", b"sync.a1"), ("b", b"device."), ("b", b"x")):
        subs._subscribe(who, topic)
    subs._subscribe("a", b"a-only")
    subs._subscribe("a", b"over")  # a's fourth: refused
    assert subs.count == {"a": 3, "b": 2} and subs.refused == 1
    subs._cleanup([b"a-only", b"device.", b"over", b"sync.a1"])  # a's connection closed
    assert subs.count == {"b": 2} and subs.total == 2
    assert subs.holders == {b"device.": {"b": 1}, b"x": {"b": 1}} and not subs.refused_by
    subs._cleanup([b"device.", b"x"])
    assert subs.count == {} and subs.total == 0 and subs.holders == {}


def test_a_refused_sync_topic_makes_that_sync_answer_limit() -> None:
    events: list[Any] = []
    subs = Subscriptions(
        FakeXPUB(), lambda f: "", lambda who, n: events.append((who, n)), maximum=1
    )  # type: ignore[arg-type]
    subs._subscribe("a", b"device.")
    subs._subscribe("a", b"sync.tok")
    assert subs.refused_token("tok") == "a" and subs.refused_token("tok") is None
    assert events == [("a", 1)]  # published once, not per refusal
    subs._subscribe("a", b"sync.tok2")
    assert events == [("a", 1)]
