"""CURVE with real processes and keys (issue 15 items 1-3, 6, 7): who gets in, what a refused
or keyless peer is told, reloads of authorized_keys without a restart, and a flood of
keyless and unknown-key peers that never reaches the broker's handlers.

Everything runs on 127.0.0.1 with ephemeral ports and ``--curve`` (CURVE on loopback);
tests/security/test_netns.py does the same across a veth between two network namespaces.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
import zmq

from labctl import client as client_module
from labctl import keys
from labctl.broker import auth
from labctl.client import BusClient
from labctl.errors import BrokerUnreachable, ConfigError, NotAllowed
from labctl.keys import client_keys
from labctl.lab import Lab

from ..fuzz.mutator import Mutator
from ..harness import LabHarness, free_port, power_service, wait_until


class CurveKeys:
    """Key pairs in a temp config dir, the broker's pair in its state dir, and the broker's
    authorized_keys file (always replaced whole: the broker never reads half an edit)."""

    def __init__(self, root: Path, broker_pair: bool = True) -> None:
        self.cfg, self.state = root / "cfg", root / "state"
        self.file = self.state / "authorized_keys.yaml"
        self.broker_key = self.state / "broker.key"
        if broker_pair:  # as an admin would, before the first start
            keys.generate("broker", self.state)
        else:  # the broker makes its own on first start
            self.state.mkdir(parents=True)

    def make(self, name: str, directory: Path | None = None) -> str:
        public, _ = keys.generate(name, directory or self.cfg)
        return keys.load(public).public.decode()

    def authorize(self, *entries: dict[str, Any], mtime_ns: int | None = None) -> None:
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(list(entries), default_style='"'))  # sizes: key-independent
        if mtime_ns is not None:  # a same-size edit that only SIGHUP can notice
            os.utime(tmp, ns=(mtime_ns, mtime_ns))
        os.replace(tmp, self.file)

    def env(self, key: str = "alice") -> dict[str, str]:
        return {
            "LABCTL_CONFIG_DIR": str(self.cfg),
            "LABCTL_BROKER_KEY": str(self.broker_key),
            "LABCTL_KEY": key,
            "LABCTL_CONNECT_TIMEOUT": "1",
        }


def entry(key: str, identity: str, role: str = "admin", **more: Any) -> dict[str, Any]:
    return {"key": key, "identity": identity, "role": role, **more}


def start_curve_broker(
    harness: LabHarness, ck: CurveKeys, monkeypatch: pytest.MonkeyPatch, *extra: str
) -> None:
    """A ``--curve`` broker; this process and its children dial it as alice (admin)."""
    for name, value in ck.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(client_module, "CONNECT_TIMEOUT", 1.0)
    harness.env.update(ck.env())
    harness.start_broker(extra=("--curve", *extra))


@pytest.fixture
def curve_lab(
    tcp_harness: LabHarness, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[LabHarness, CurveKeys]]:
    """A CURVE broker that authorizes alice (admin) and the service pdu1 (pdu1* devices);
    bob has a key nobody authorized."""
    ck = CurveKeys(tcp_harness.root)
    ck.keys = {  # type: ignore[attr-defined]
        "alice": ck.make("alice"),
        "bob": ck.make("bob"),
        "pdu1": ck.make("pdu1", tcp_harness.root),  # beside its config, as services keep it
    }
    ck.authorize(
        entry(ck.keys["alice"], "alice"),  # type: ignore[attr-defined]
        entry(ck.keys["pdu1"], "pdu1", "service", devices=["pdu1*"]),  # type: ignore[attr-defined]
    )
    start_curve_broker(tcp_harness, ck, monkeypatch)
    yield tcp_harness, ck


def refused_now(harness: LabHarness, key: str) -> str | None:
    """The one line a fresh connection with ``key`` gets, None if the broker answers it."""
    pair = keys.own_key(key)
    assert pair.secret is not None
    server = keys.public_key(os.environ["LABCTL_BROKER_KEY"])
    bus = BusClient(harness.bus, 1.0, keys.ClientKeys(server, pair.public, pair.secret))
    try:
        bus.call("hello")
        return None
    except BrokerUnreachable as exc:
        return exc.message
    finally:
        bus.close()


def journal_via_dashboard(port: int) -> bool:
    """True once the dashboard answers /api/events from the broker's journal: a live call
    through its own SDK connection (a dashboard that cannot dial the bus answers 500)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/events", timeout=5) as resp:
            return "broker.started" in {ev["topic"] for ev in json.loads(resp.read())}
    except OSError:
        return False


# -- keys and authorized_keys, no broker -------------------------------------------------------
def test_keys_generate_writes_a_private_secret_and_show_prints_the_public_key(
    tcp_harness: LabHarness,
) -> None:
    env = {"LABCTL_CONFIG_DIR": str(tcp_harness.root / "cfg")}
    made = tcp_harness.run_cli("keys", "generate", "carol", env=env)
    assert made.returncode == 0, made.stderr
    secret = tcp_harness.root / "cfg" / "carol.key_secret"
    assert secret.stat().st_mode & 0o777 == 0o600
    shown = tcp_harness.run_cli("keys", "show", "carol", env=env)
    assert shown.stdout.strip() == keys.load(secret).public.decode()
    assert shown.stdout.strip() in made.stdout
    again = tcp_harness.run_cli("keys", "generate", "carol", env=env)
    assert again.returncode == 2 and "exists already" in again.stderr
    as_entry = tcp_harness.run_cli("keys", "show", str(secret), "--entry", "user", env=env)
    parsed = auth.parse(yaml.safe_load(as_entry.stdout), tcp_harness.root / "k.yaml")
    assert parsed[0].identity == "carol" and parsed[0].role == "user"


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ({"identity": "a", "role": "user"}, "entry 1 (a): give exactly one of key"),
        ({"key": "short", "identity": "a", "role": "user"}, "entry 1 (a): key: must be a 40"),
        ({"key": "K", "identity": "a", "role": "root"}, "entry 1 (a): role: must be one of"),
        ({"key": "K", "identity": "a", "role": "service"}, "entry 1 (a): devices: required"),
        ({"key": "K", "identity": "a", "role": "user", "devices": ["x"]}, "devices: only a"),
        ({"key": "K", "identity": "a", "role": "user", "rol": 1}, "entry 1: rol: unknown"),
        ({"key": "K", "role": "user"}, "entry 1: identity: required"),
        ({"key": "K", "identity": "dashboard", "role": "admin"}, "'dashboard' is reserved"),
        ({"key": "K", "identity": "lab-services", "role": "viewer"}, "'lab-services' is reserved"),
        ({"key": "K", "identity": "anonymous@10.0.0.1", "role": "user"}, "is reserved"),
    ],
)
def test_authorized_keys_errors_name_the_file_the_entry_and_the_field(
    raw: dict[str, Any], says: str, tmp_path: Path
) -> None:
    key = zmq.curve_keypair()[0].decode()
    raw = {k: (key if v == "K" else v) for k, v in raw.items()}
    with pytest.raises(ConfigError) as err:
        auth.parse([raw], tmp_path / "authorized_keys.yaml")
    assert str(err.value).startswith(f"{tmp_path / 'authorized_keys.yaml'}: ")
    assert says in str(err.value)
    assert "\n" not in str(err.value)


def test_a_bind_beyond_loopback_turns_curve_on_unless_insecure(tmp_path: Path) -> None:
    def settings(bus: str, **flags: bool) -> Any:
        return SimpleNamespace(bus=bus, events="ipc:///x", state=tmp_path, authorized_keys=None,
                               curve=flags.get("curve", False), insecure=flags.get("insecure", False))  # fmt: skip

    assert auth.curve_table(settings("tcp://127.0.0.1:5550")) is None  # lab up: open
    assert auth.curve_table(settings("tcp://[::1]:5550")) is None
    assert auth.curve_table(settings("tcp://127.0.0.1:5550", curve=True)) is not None
    assert auth.curve_table(settings("tcp://0.0.0.0:5550")) is not None
    assert auth.curve_table(settings("tcp://10.1.2.3:5550")) is not None
    assert auth.curve_table(settings("tcp://*:5550", insecure=True)) is None


# -- a CURVE broker ----------------------------------------------------------------------------
def test_authorized_keys_drive_the_lab_and_name_the_lease_holder(
    curve_lab: tuple[LabHarness, CurveKeys],
) -> None:
    harness, _ = curve_lab
    harness.start_service(power_service(outlets=1))  # its key beside its config
    on = harness.run_cli("power", "on", "pdu1.1")
    assert on.returncode == 0, on.stderr
    lab = harness.lab()
    with lab.event_stream("device.pdu1.1.status") as events, lab.lease("name=pdu1.1") as lease:
        # the holder is the key's identity, whatever the client declared
        assert [le["holder"] for le in lab.leases()["leases"]] == ["alice"]
        lease["pdu1.1"].off()  # the events XPUB serves CURVE too
        assert events.next_event(5)["body"]["state"] == "off"


def test_the_dashboard_reads_a_curve_broker_with_its_own_key(
    tcp_harness: LabHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    ck = CurveKeys(tcp_harness.root)
    ck.authorize(entry(ck.make("alice"), "alice"))
    port = free_port()
    start_curve_broker(tcp_harness, ck, monkeypatch, "--dashboard", f"127.0.0.1:{port}")
    wait_until(lambda: journal_via_dashboard(port), 15, "the dashboard to read the journal")
    assert "refused" not in tcp_harness.broker.output()  # type: ignore[union-attr]


def test_an_unknown_key_is_refused_in_one_line(curve_lab: tuple[LabHarness, CurveKeys]) -> None:
    harness, ck = curve_lab
    bob = ck.keys["bob"]  # type: ignore[attr-defined]
    started = time.monotonic()  # told at once, not after the connect timeout (60 s here)
    done = harness.run_cli("devices", env={"LABCTL_KEY": "bob", "LABCTL_CONNECT_TIMEOUT": "60"})
    assert time.monotonic() - started < 30
    assert done.returncode == 5
    assert done.stderr.strip().splitlines() == [
        f"error: the broker at {harness.bus} refused key {bob}: not authorized "
        "(ask the lab admin to add it to the broker's authorized_keys)"
    ]
    assert "refused a key that is not in authorized_keys" in harness.broker.output()  # type: ignore[union-attr]


@pytest.mark.parametrize("who", ["unknown key", "no keys"])
def test_a_refused_client_is_told_again_on_its_next_calls_not_left_hanging(
    curve_lab: tuple[LabHarness, CurveKeys], monkeypatch: pytest.MonkeyPatch, who: str
) -> None:
    harness, _ = curve_lab
    if who == "no keys":
        monkeypatch.setenv("LABCTL_BROKER_KEY", "")
        client_keys, told = None, "requires CURVE keys"
    else:
        pair = keys.own_key("bob")
        assert pair.secret is not None
        server = keys.public_key(os.environ["LABCTL_BROKER_KEY"])
        client_keys, told = keys.ClientKeys(server, pair.public, pair.secret), "refused key"
    bus = BusClient(harness.bus, 30.0, client_keys)
    try:
        for _ in range(3):  # libzmq may not dial again after a refusal: the send then has
            started = time.monotonic()  # no connection to queue on (it blocked for ever)
            with pytest.raises(BrokerUnreachable, match=told):
                bus.call("hello")
            assert time.monotonic() - started < 10
    finally:
        bus.close()


def test_a_client_without_keys_is_told_the_broker_requires_them(
    curve_lab: tuple[LabHarness, CurveKeys],
) -> None:
    harness, _ = curve_lab
    env = {"LABCTL_BROKER_KEY": "", "LABCTL_CONNECT_TIMEOUT": "60"}
    started = time.monotonic()
    done = harness.run_cli("devices", env=env)
    assert time.monotonic() - started < 30  # at once: the mechanisms differ
    assert done.returncode == 5
    assert done.stderr.strip() == (
        f"error: the broker at {harness.bus} requires CURVE keys: see `labctl keys` "
        "(LABCTL_BROKER_KEY, LABCTL_KEY)"
    )
    missing = harness.run_cli("devices", env={"LABCTL_KEY": "nobody"})
    assert missing.returncode == 2 and "labctl keys generate" in missing.stderr


def test_a_refused_service_says_why_keeps_trying_and_joins_once_authorized(
    curve_lab: tuple[LabHarness, CurveKeys],
) -> None:
    harness, ck = curve_lab
    pdu2 = ck.make("pdu2", harness.root)
    proc = harness.start_service(power_service("pdu2", outlets=1), wait=False)
    wait_until(lambda: proc.output().count(f"refused key {pdu2}") >= 2, 20, "two refusals")
    assert proc.alive()
    broker_pid = harness.broker.pid  # type: ignore[union-attr]
    ck.authorize(
        entry(ck.keys["alice"], "alice"),  # type: ignore[attr-defined]
        entry(pdu2, "pdu2", "service", devices=["pdu2.*"]),
    )
    harness.wait_online(["pdu2.1"], timeout=20)  # no restart of anything
    assert harness.broker.pid == broker_pid and harness.broker.alive()  # type: ignore[union-attr]


def test_a_rotated_key_is_refused_at_once_even_on_its_open_session_and_others_go_on(
    curve_lab: tuple[LabHarness, CurveKeys],
) -> None:
    harness, ck = curve_lab
    pdu1 = entry(ck.keys["pdu1"], "pdu1", "service", devices=["pdu1*"])  # type: ignore[attr-defined]
    bob = entry(ck.keys["bob"], "bob", "viewer")  # type: ignore[attr-defined]
    ck.authorize(entry(ck.keys["alice"], "alice"), bob, pdu1)  # type: ignore[attr-defined]
    wait_until(lambda: refused_now(harness, "bob") is None, 10, "bob authorized")
    old_session = Lab(harness.bus, timeout=2)  # connected with alice's first key
    other = Lab(harness.bus, timeout=2, keys=client_keys(str(ck.broker_key), "bob"))
    try:
        assert old_session.devices() == [] and other.devices() == []
        new_key = ck.make("alice2")
        ck.authorize(entry(new_key, "alice"), bob, pdu1)  # alice: a new key, the old one gone
        wait_until(lambda: refused_now(harness, "alice"), 10, "the old key to be refused")
        assert refused_now(harness, "alice2") is None
        done = harness.run_cli("devices", "-o", "json", env={"LABCTL_KEY": "alice2"})
        assert done.returncode == 0 and json.loads(done.stdout) == []
        # a removed key acts no more, even on a connection made before (a stolen key ends)
        with pytest.raises(NotAllowed, match="the key is no longer in authorized_keys"):
            old_session.devices()
        assert other.devices() == []  # the reload dropped no session whose key stayed
    finally:
        old_session.close()
        other.close()
    assert "authorized_keys reloaded" in harness.broker.output()  # type: ignore[union-attr]


def test_sighup_reloads_an_edit_the_mtime_does_not_show(
    curve_lab: tuple[LabHarness, CurveKeys],
) -> None:
    harness, ck = curve_lab
    before = ck.file.stat()
    # bob's key in alice's place: the same size, and the old mtime put back
    ck.authorize(
        entry(ck.keys["bob"], "alice"),  # type: ignore[attr-defined]
        entry(ck.keys["pdu1"], "pdu1", "service", devices=["pdu1*"]),  # type: ignore[attr-defined]
        mtime_ns=before.st_mtime_ns,
    )
    assert ck.file.stat().st_size == before.st_size
    assert refused_now(harness, "bob")  # 1 s of mtime checks saw nothing to reload
    os.kill(harness.broker.pid, signal.SIGHUP)  # type: ignore[union-attr]
    wait_until(lambda: refused_now(harness, "bob") is None, 10, "bob to be let in")
    assert refused_now(harness, "alice")
    assert "SIGHUP: reloading authorized_keys" in harness.broker.output()  # type: ignore[union-attr]


def test_a_broken_edit_keeps_the_keys_in_force(curve_lab: tuple[LabHarness, CurveKeys]) -> None:
    harness, ck = curve_lab
    ck.file.write_text("- key: nope\n  identity: alice\n  role: admin\n")
    wait_until(lambda: "authorized_keys not reloaded" in harness.broker.output(), 10, "the error")  # type: ignore[union-attr]
    assert "entry 1 (alice): key: must be a 40-character Z85" in harness.broker.output()  # type: ignore[union-attr]
    assert refused_now(harness, "alice") is None


def test_keyless_and_unknown_key_floods_never_reach_the_broker(
    curve_lab: tuple[LabHarness, CurveKeys],
) -> None:
    """Item 6: without a valid key a peer gets no frame into the broker, so no state: the
    same mutated messages from an open peer log 'bad message' (tests/fuzz)."""
    harness, _ = curve_lab
    server = keys.public_key(os.environ["LABCTL_BROKER_KEY"])
    ctx = zmq.Context.instance()
    socks, watches, mutator = [], [], Mutator(7)
    for i in range(20):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        rogue = keys.ClientKeys.generated(server) if i % 2 else None
        watches.append(keys.secure(sock, rogue, harness.bus))
        sock.connect(harness.bus)
        socks.append(sock)
    try:
        for _ in range(50):
            for sock in socks:
                try:
                    sock.send_multipart(mutator.next(), zmq.NOBLOCK)
                except zmq.Again:
                    pass
        wait_until(lambda: all(w.explain() for w in watches), 15, "every handshake to fail")
        said = [str(w.explain()) for w in watches]
        keyless, rogue = said[0::2], said[1::2]
        assert all("requires CURVE keys" in line for line in keyless), keyless
        # the refusal, or (the broker closed first) the dropped handshake naming the key
        assert all("refused key" in line or "dropped the CURVE" in line for line in rogue)
        assert any("refused key" in line for line in rogue), rogue
        assert harness.lab().devices() == []  # the legit client is served
    finally:
        for w, sock in zip(watches, socks, strict=True):
            w.stop()
            sock.close(0)
    log = harness.broker.output()  # type: ignore[union-attr]
    assert "bad message" not in log
    assert log.count("refused a key that is not in authorized_keys") <= 10  # once per key


def test_a_revoked_identity_is_refused_at_its_next_request(
    curve_lab: tuple[LabHarness, CurveKeys],
) -> None:
    harness, ck = curve_lab
    session = Lab(harness.bus, timeout=2)
    try:
        assert session.devices() == []
        ck.authorize(entry(ck.keys["pdu1"], "pdu1", "service", devices=["pdu1*"]))  # type: ignore[attr-defined]

        def refused() -> bool:
            try:
                session.devices()
            except NotAllowed as exc:
                assert exc.details["identity"] == "alice"
                return True
            return False

        wait_until(refused, 10, "alice's open session to be refused")
        assert refused_now(harness, "alice")  # and no new connection gets in
    finally:
        session.close()


def test_an_open_broker_serves_its_dashboard_whatever_the_shell_says(
    tcp_harness: LabHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shell set up for a CURVE lab (LABCTL_BROKER_KEY) starts a local, open broker: its
    dashboard dials it open (keys=False), not with the shell's keys."""
    ck = CurveKeys(tcp_harness.root)
    ck.make("alice")
    tcp_harness.env.update(ck.env())
    port = free_port()
    tcp_harness.start_broker(extra=("--dashboard", f"127.0.0.1:{port}"))  # open: loopback
    wait_until(lambda: journal_via_dashboard(port), 15, "the dashboard to read the journal")
