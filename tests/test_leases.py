"""Leases: exclusive, fair, persistent, enforced — with real broker and service processes."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from labctl.errors import (
    DeviceBusy,
    LabError,
    LeaseNotFound,
    LeaseRequired,
    NoMatch,
    WaitTimeout,
)
from labctl.lab import Lease

from .harness import LABCTL, LabHarness, power_service, wait_until


def dut_services(h: LabHarness, duts: list[str]) -> None:
    """Per DUT: a power outlet and an aux outlet (two services), grouped by `dut`."""
    main = {"service": "pdu", "kind": "power", "driver": "mock", "labels": {"board": "rpi4"},
            "devices": [{"name": f"{d}-power", "labels": {"dut": d}} for d in duts]}  # fmt: skip
    aux = {"service": "aux", "kind": "power", "driver": "mock", "labels": {"board": "rpi4", "role": "aux"},
           "devices": [{"name": f"{d}-aux", "labels": {"dut": d}, "on_release": "keep"} for d in duts]}  # fmt: skip
    h.start_service(main)
    h.start_service(aux)


@pytest.fixture
def lab2(harness: LabHarness) -> LabHarness:
    harness.start_broker()
    dut_services(harness, ["rpi4-01", "rpi4-02"])
    return harness


def test_lease_takes_a_whole_group_and_gives_access_by_kind_and_name(lab2: LabHarness) -> None:
    lab = lab2.lab()
    with lab.lease("board=rpi4", duration="10m") as lease:
        assert len(lease.id) >= 16
        assert lease.devices in (["rpi4-01-aux", "rpi4-01-power"], ["rpi4-02-aux", "rpi4-02-power"])
        assert time.time() + 590 < lease.end_time < time.time() + 610
        with pytest.raises(
            LabError, match=r"2 power devices.*lease\['rpi4-0.-aux'\].*lease\['rpi4-0.-power'\]"
        ):
            _ = lease.power
        dut = lease.devices[0].removesuffix("-aux")
        assert lease[f"{dut}-power"].on() == "on"
        with pytest.raises(LabError, match="not 'nope'"):
            lease["nope"]
        held = {d["name"]: d for d in lab.devices("board=rpi4")}
        assert held[f"{dut}-power"]["lease"] == lease.ref and held[f"{dut}-power"]["holder"]
    assert all(d["lease"] is None for d in lab.devices())


def test_release_on_exception_and_reset_as_configured(lab2: LabHarness) -> None:
    lab = lab2.lab()
    with lab.event_stream("lease.*") as events:
        with pytest.raises(RuntimeError), lab.lease("dut=rpi4-01") as lease:
            lease["rpi4-01-power"].on()
            lease["rpi4-01-aux"].on()
            raise RuntimeError("test failed")
        ev = events.wait_for(f"lease.{lease.ref}.ended")
    assert ev["body"]["reason"] == "released"
    wait_until(lambda: lab.device("rpi4-01-power").state() == "off", 5, "power reset to off")
    assert lab.device("rpi4-01-aux").state() == "on"  # on_release: keep


def test_selector_matching_nothing_fails_at_once(lab2: LabHarness) -> None:
    t0 = time.monotonic()
    with pytest.raises(NoMatch, match="board=pi5"):
        lab2.lab().lease("board=pi5", wait="1m")
    assert time.monotonic() - t0 < 2


def test_mutating_calls_need_the_lease_and_errors_name_the_holder(lab2: LabHarness) -> None:
    a, b = lab2.lab(), lab2.lab()
    with a.lease("dut=rpi4-01") as lease:
        with pytest.raises(DeviceBusy, match="leased by"):
            b.device("rpi4-01-power").on()
        with pytest.raises(LeaseRequired, match=r"lease acquire dut=rpi4-02"):
            b.device("rpi4-02-power").on()
        with pytest.raises(LeaseRequired, match=f"your lease {lease.ref} does not cover it"):
            b.device("rpi4-02-power", lease=lease).on()
        with b.lease("dut=rpi4-02") as other, pytest.raises(DeviceBusy, match=r"leased by \w"):
            b.device("rpi4-01-power", lease=other).on()
        assert b.device("rpi4-01-power").state() == "off"  # read-only needs no lease
        with pytest.raises(DeviceBusy, match="leased by"):
            b.lease("dut=rpi4-01")
        lease["rpi4-01-power"].on()


def test_two_clients_race_one_wins_the_other_queues_fifo(lab2: LabHarness) -> None:
    results: dict[str, object] = {}
    positions: dict[str, list[int]] = {"a": [], "b": []}
    barrier = threading.Barrier(2)
    release = threading.Event()

    def contender(tag: str) -> None:
        lab = lab2.lab(timeout=10)
        barrier.wait()
        lease = lab.lease(
            "dut=rpi4-01", wait="20s", progress=lambda p: positions[tag].append(p["position"])
        )
        results[tag] = (time.monotonic(), lease.id)
        if not release.is_set():
            release.wait(20)
        lease.release()

    threads = [threading.Thread(target=contender, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    wait_until(lambda: len(results) == 1, 10, "one winner")
    winner = next(iter(results))
    loser = "b" if winner == "a" else "a"
    # The broker reminds waiters of their position every heartbeat: 1, then 1 again, ...
    wait_until(lambda: set(positions[loser]) == {1}, 5, "the loser to see queue position 1")
    assert lab2.lab().client.call("lease.list")["queue"][0]["position"] == 1
    release.set()
    for t in threads:
        t.join(20)
    assert set(results) == {"a", "b"}
    assert results[winner][1] != results[loser][1]  # type: ignore[index]
    assert positions[winner] == []


def test_wait_running_out_is_a_clear_error(lab2: LabHarness) -> None:
    lab = lab2.lab()
    with lab.lease("dut=rpi4-01"):
        t0 = time.monotonic()
        with pytest.raises(WaitTimeout, match="within 0.[3-9]"):
            lab2.lab().lease("dut=rpi4-01", wait=0.4)
        assert time.monotonic() - t0 < 3
        assert lab.client.call("lease.list")["queue"] == []


def test_lease_expires_at_its_end_time(lab2: LabHarness) -> None:
    lab = lab2.lab()
    with lab.event_stream("lease.*") as events:
        lease = lab.lease("dut=rpi4-02", duration=0.5)
        ev = events.wait_for(f"lease.{lease.ref}.ended", timeout=5)
    assert ev["body"]["reason"] == "expired"
    with pytest.raises(LeaseNotFound):
        lease.extend("1m")
    lease.release()  # releasing an ended lease is harmless


def test_extend_moves_the_end_time(lab2: LabHarness) -> None:
    with lab2.lab().lease("dut=rpi4-02", duration="1m") as lease:
        end = lease.end_time
        lease.extend("30m")
        assert lease.end_time == pytest.approx(end + 1800, abs=1)


HOLDER = """
import sys, time
from labctl.lab import Lab
lab = Lab(sys.argv[1])
lease = lab.lease(sys.argv[2], duration="10m")
print(lease.ref, flush=True)
time.sleep(600)
"""


def start_holder(lab: LabHarness, selector: str) -> tuple[subprocess.Popen[str], str]:
    """A process that holds a lease with SDK keepalives; returns it and the lease's ref."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, lab.bus, selector],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout is not None
    return holder, holder.stdout.readline().strip()


def test_keepalives_hold_a_lease_that_a_killed_holder_loses(workdir: Path) -> None:
    # A grace of 3 s (keepalives every second) tolerates a stalled keepalive on a loaded machine.
    lab3 = LabHarness(workdir, grace="3s")
    try:
        lab3.start_broker()
        dut_services(lab3, ["rpi4-01", "rpi4-02"])
        alive, alive_ref = start_holder(lab3, "dut=rpi4-01")
        killed, killed_ref = start_holder(lab3, "dut=rpi4-02")
        lab = lab3.lab()
        with lab.event_stream("lease.*.ended") as events:
            killed.kill()
            gone = time.monotonic()
            ev = events.wait_for(f"lease.{killed_ref}.ended", timeout=15)
            assert ev["body"]["reason"] == "holder-lost"
            assert time.monotonic() - gone < 3 + 3  # the grace, plus one sweep and slack
        # The sweep that dropped the killed holder's lease would have dropped this one too
        # (acquired earlier) had its keepalives not held it: no timed negative wait needed.
        assert [lease["ref"] for lease in lab.client.call("lease.list")["leases"]] == [alive_ref]
    finally:
        for proc in (alive, killed):
            proc.kill()
            proc.wait()
        lab3.close()


def test_leases_survive_a_broker_kill_and_holders_keep_working(lab2: LabHarness) -> None:
    lab = lab2.lab()
    lease = lab.lease("dut=rpi4-02", duration="20m")
    before = lab.client.call("lease.show", id=lease.id)
    assert lab2.broker is not None
    lab2.broker.kill(signal.SIGKILL)
    lab2.start_broker()
    lab2.wait_online(["rpi4-02-power", "rpi4-02-aux"])
    after = lab2.lab().client.call("lease.show", id=lease.id)
    assert (after["id"], after["end"], after["devices"]) == (
        before["id"],
        before["end"],
        before["devices"],
    )
    wait_until(
        lambda: _try(lambda: lease["rpi4-02-power"].on()) == "on", 10, "the holder's call to work"
    )
    with pytest.raises(DeviceBusy):
        lab2.lab().lease("dut=rpi4-02")
    lease.release()
    audit = lab2.lab().client.call("audit")
    assert {"lease.granted", "lease.ended"} <= {row["action"] for row in audit}


def _try(fn):  # type: ignore[no-untyped-def]
    try:
        return fn()
    except LabError:
        return None


def test_maintenance_takes_a_device_out_of_allocation(lab2: LabHarness) -> None:
    r = lab2.run_cli("device", "maintenance", "rpi4-01-power", "on", "--reason", "flaky relay")
    assert r.returncode == 0, r.stderr
    lab = lab2.lab()
    assert lab.devices("name=rpi4-01-power")[0]["health"] == "maintenance"
    with pytest.raises(DeviceBusy, match="maintenance"):
        lab.lease("dut=rpi4-01")
    with lab.lease("board=rpi4") as lease:  # allocation skips the group
        assert "rpi4-02-power" in lease.devices
    assert "maintenance" in lab2.run_cli("devices").stdout
    lab2.run_cli("device", "maintenance", "rpi4-01-power", "off")
    with lab.lease("dut=rpi4-01"):
        pass


def test_three_device_group_is_all_or_nothing(harness: LabHarness) -> None:
    harness.start_broker()
    dut_services(harness, ["b1"])
    harness.start_service(
        power_service("usb", outlets=1, dut_prefix="b")
        | {"devices": [{"name": "usb.1", "labels": {"dut": "b1"}}]}
    )
    lab = harness.lab()
    with lab.lease("name=usb.1"):
        with pytest.raises(DeviceBusy, match="usb.1 leased by"):
            lab.lease("dut=b1")  # two of three are free: nothing is taken
        assert all(d["lease"] is None for d in lab.devices("dut=b1,name!=usb.1"))
    with lab.lease("dut=b1") as lease:
        assert lease.devices == ["b1-aux", "b1-power", "usb.1"]


def test_a_vanished_waiter_does_not_take_the_group_or_the_broker_down(lab2: LabHarness) -> None:
    lab = lab2.lab()
    held = lab.lease("dut=rpi4-01")
    waiter = subprocess.Popen([*LABCTL, "lease", "acquire", "dut=rpi4-01", "--wait", "60s"], env=lab2.env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_until(
            lambda: len(lab.client.call("lease.list")["queue"]) == 1, 10, "the waiter to queue"
        )
        waiter.kill()
        waiter.wait()
        # Either the broker drops the dead waiter from the queue first (its heartbeat reminder
        # bounces), or it grants the group to it and then ends that lease as holder-lost:
        # both are right, and both end with no lease and no queue.
        held.release()
        wait_until(
            lambda: lab.client.call("lease.list") == {"leases": [], "queue": []},
            10,
            "the dead waiter's request or lease to go",
        )
        assert lab2.broker is not None and lab2.broker.alive()
        with lab.lease("dut=rpi4-01") as again:
            assert again.devices == ["rpi4-01-aux", "rpi4-01-power"]
    finally:
        waiter.kill()
        waiter.wait()


CTRL_C_HOLDER = """
import sys, time
from labctl.lab import Lab
with Lab(sys.argv[1]) as lab, lab.lease("dut=rpi4-02", duration="10m") as lease:
    print(lease.ref, flush=True)
    time.sleep(600)
"""


def test_ctrl_c_releases_the_lease_at_once(lab2: LabHarness) -> None:
    holder = subprocess.Popen([sys.executable, "-c", CTRL_C_HOLDER, lab2.bus], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None
        ref = holder.stdout.readline().strip()
        with lab2.lab().event_stream(f"lease.{ref}.ended") as events:
            holder.send_signal(signal.SIGINT)
            ev = events.wait_for(f"lease.{ref}.ended", timeout=5)
        assert ev["body"]["reason"] == "released"  # not holder-lost after the grace period
        assert holder.wait(5) != 0
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("bad", ["nan", "inf", "-5", "1e300"])
def test_non_finite_or_absurd_durations_are_refused(lab2: LabHarness, bad: str) -> None:
    from labctl.errors import BadRequest

    lab = lab2.lab()
    with pytest.raises(BadRequest):
        lab.client.call("lease.acquire", selector="dut=rpi4-01", duration=float(bad), holder="t")
    r = lab2.run_cli("lease", "acquire", "dut=rpi4-01", "--duration", bad)
    assert r.returncode == 2 and r.stderr.startswith("error: ")
    with lab.lease("dut=rpi4-01") as lease, pytest.raises(BadRequest):
        lab.client.call("lease.extend", id=lease.id, duration=float(bad))
    assert lab2.broker is not None and lab2.broker.alive()


def test_a_call_running_when_its_lease_ends_cannot_touch_the_next_holders_device(
    lab2: LabHarness,
) -> None:
    a, b = lab2.lab(timeout=10), lab2.lab()
    lease = a.lease("dut=rpi4-01")
    lease["rpi4-01-power"].on()
    outcome: dict[str, object] = {}

    def cycle() -> None:
        try:
            outcome["result"] = lease["rpi4-01-power"].cycle(wait=1.5)
        except LeaseNotFound as exc:
            outcome["result"] = exc

    t = threading.Thread(target=cycle)
    t.start()
    wait_until(lambda: b.device("rpi4-01-power").state() == "off", 5, "the cycle's off")
    b.client.call("lease.release", id=lease.id, force=True, reason="test", who="admin")
    with b.lease("dut=rpi4-01") as next_holder:
        t.join(10)
        assert isinstance(outcome["result"], LeaseNotFound)
        assert next_holder["rpi4-01-power"].state() == "off"  # the old cycle never switched it on


def test_a_queued_request_survives_a_broker_restart(lab2: LabHarness) -> None:
    holder = lab2.lab()
    held = holder.lease("dut=rpi4-01")
    got: dict[str, object] = {}
    progress: list[dict[str, object]] = []

    def wait_for_it() -> None:
        lab = lab2.lab(timeout=5)
        got["lease"] = lab.lease("dut=rpi4-01", wait="60s", progress=progress.append)

    t = threading.Thread(target=wait_for_it)
    t.start()
    wait_until(lambda: progress and progress[-1]["position"] == 1, 10, "the request to queue")
    assert lab2.broker is not None
    lab2.broker.kill(signal.SIGKILL)
    lab2.start_broker()  # forgets the queue; keeps the lease
    wait_until(lambda: any(p.get("requeued") for p in progress), 15, "the SDK to queue again")
    wait_until(
        lambda: len(holder.client.call("lease.list")["queue"]) == 1, 15, "the new queue entry"
    )
    held.release()
    t.join(15)
    assert isinstance(got.get("lease"), Lease)
    got["lease"].release()  # type: ignore[union-attr]


def test_a_lease_ending_while_its_device_is_offline_resets_it_when_it_returns(
    harness: LabHarness,
) -> None:
    harness.start_broker()
    svc = harness.start_service(power_service("pdu7", outlets=1))
    lab = harness.lab()
    lease = lab.lease("name=pdu7.1")
    lease["pdu7.1"].on()
    svc.kill(signal.SIGKILL)
    harness.wait_online(["pdu7.1"], online=False)
    lease.release()  # the reset is owed, and must survive a broker restart too
    assert harness.broker is not None
    harness.broker.kill(signal.SIGKILL)
    harness.start_broker()
    # the mock starts "off", so start it "on" to see the owed reset switch it off
    harness.start_service(power_service("pdu7", outlets=1) | {"config": {"initial": True}})
    wait_until(lambda: harness.lab().device("pdu7.1").state() == "off", 10, "the owed reset")


def test_a_failed_reset_marks_the_device_bad_until_an_admin_clears_it(harness: LabHarness) -> None:
    harness.start_broker()
    outlet = harness.root / "outlet"
    harness.start_service({"service": "pdu", "kind": "power", "driver": "mock",
                           "devices": [{"name": "p1", "labels": {"dut": "d1"},
                                        "config": {"state_file": str(outlet)}}]})  # fmt: skip
    lab = harness.lab()
    with lab.lease("dut=d1") as lease:
        lease["p1"].on()
        outlet.with_suffix(".tmp").mkdir()  # the outlet can no longer be switched: it stays on
    wait_until(lambda: lab.devices("name=p1")[0]["health"] == "bad", 10, "the failed reset")
    assert outlet.read_text() == "on\n"
    reason = lab.devices("name=p1")[0]["health_reason"]
    assert reason.startswith("reset failed: IsADirectoryError")
    journal = lab.client.call("audit", limit=20)
    assert {"who": "broker", "action": "device.health", "target": "p1", "why": f"bad {reason}"} in [
        {k: row[k] for k in ("who", "action", "target", "why")} for row in journal
    ]
    with pytest.raises(DeviceBusy, match="p1 in bad"):
        lab.lease("dut=d1")  # not allocated ...
    outlet.with_suffix(".tmp").rmdir()
    lab.set_health("p1", "good", "outlet replaced")  # ... until an admin clears it
    with lab.lease("dut=d1") as lease:
        assert lease["p1"].on() == "on"
    wait_until(lambda: outlet.read_text() == "off\n", 10, "the next reset to work")
    assert lab.devices("name=p1")[0]["health"] == "good"


def test_the_holder_and_the_audit_name_come_from_the_connection_not_the_call(
    lab2: LabHarness,
) -> None:
    from labctl import protocol
    from labctl.client import holder_identity

    lab = lab2.lab()
    me = holder_identity()
    info = lab.client.call(
        "lease.acquire", selector="dut=rpi4-01", holder="root@ci", keepalive=False
    )
    assert info["holder"] == me
    assert [le["holder"] for le in lab.client.call("lease.list")["leases"]] == [me]
    with pytest.raises(DeviceBusy, match=f"leased by {me}"):
        lab2.lab().device("rpi4-01-power").on()
    lab.client.call("lease.extend", id=info["id"], duration=60, who="root@ci")
    lab.client.call("lease.release", id=info["id"], who="root@ci")
    lab.client.call("health", name="rpi4-02-aux", health="maintenance", reason="t", who="root@ci")
    mine = [r for r in lab.client.call("audit", limit=4)]
    assert [r["action"] for r in mine] == [
        "device.health", "lease.ended", "lease.extended", "lease.granted"
    ]  # fmt: skip
    assert {r["who"] for r in mine} == {me}
    # a peer that declares nothing in its handshake is anonymous, whatever it claims
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(lab2.bus)
    try:
        call = protocol.Call.of("lease.acquire", {"selector": "dut=rpi4-01", "holder": me})
        call.id = 1
        sock.send_multipart(call.to_frames())
        assert sock.poll(5000)
        reply = protocol.Reply.parse(protocol.decode(sock.recv_multipart()))
        assert reply.result["holder"].startswith("anonymous")
    finally:
        sock.close()


def test_a_locked_database_delays_a_grant_but_never_the_brokers_loop(lab2: LabHarness) -> None:
    lab, other = lab2.lab(timeout=15), lab2.lab()
    db = sqlite3.connect(lab2.root / "state" / "broker.sqlite3", timeout=0, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")  # a backup or an admin's shell holding the write lock
    got: dict[str, object] = {}

    def acquire() -> None:
        got["lease"] = lab.lease("dut=rpi4-01", duration="1m")

    waiter = threading.Thread(target=acquire)
    waiter.start()
    try:
        # the broker granted it in memory; the reply waits for the commit the lock holds up
        wait_until(lambda: other.client.call("lease.list")["leases"], 5, "the grant")
        for _ in range(20):  # meanwhile the loop answers at once (it would block in SQLite)
            t0 = time.monotonic()
            assert other.device("rpi4-02-power").state() == "off"
            assert time.monotonic() - t0 < 0.5
        assert waiter.is_alive() and "lease" not in got
    finally:
        db.execute("ROLLBACK")
        db.close()
        waiter.join(10)
    assert isinstance(got["lease"], Lease)
    got["lease"].release()  # type: ignore[attr-defined]


def test_a_device_is_not_allocated_while_its_reset_is_unanswered(harness: LabHarness) -> None:
    harness.start_broker()
    started, gate, fail = (harness.root / n for n in ("reset-started", "gate", "fail"))
    # The outlet's off command (the reset) waits for the test to open the gate, then fails if
    # told to.
    off = f"touch {started}; while [ ! -e {gate} ]; do sleep 0.02; done; [ ! -e {fail} ]"
    harness.start_service({"service": "relay", "kind": "power", "driver": "shell",
                           "devices": [{"name": "r1", "labels": {"dut": "d1"}}],
                           "config": {"on": "true", "off": off, "timeout": 30}})  # fmt: skip
    lab, other = harness.lab(), harness.lab()  # the waiting request on its own connection

    def acquire_right_after_a_release(held: Any) -> Any:
        started.unlink(missing_ok=True)
        held.release()
        wait_until(started.exists, 10, "the reset to start")
        result: list[Any] = []

        def acquire() -> None:  # no wait: a request made right after a release
            try:
                result.append(other.lease("dut=d1"))
            except Exception as exc:
                result.append(exc)

        thread = threading.Thread(target=acquire)
        thread.start()
        # It is queued until the reset is answered, never granted before it.
        wait_until(lambda: len(lab.leases()["queue"]) == 1, 10, "the request to wait")
        assert lab.leases()["leases"] == [] and not result
        return thread, result

    thread, result = acquire_right_after_a_release(lab.lease("dut=d1"))
    gate.touch()  # the reset succeeds: the request is granted
    thread.join(10)
    assert [lease.devices for lease in result] == [["r1"]]
    gate.unlink()
    fail.touch()
    thread, result = acquire_right_after_a_release(result[0])
    gate.touch()  # the reset fails: the request is told so at once
    thread.join(10)
    assert isinstance(result[0], DeviceBusy) and "r1 in bad" in str(result[0])


def test_lease_ids_never_start_like_a_command_line_option() -> None:
    from labctl.broker.leases import new_lease_id

    ids = [new_lease_id() for _ in range(2000)]  # about 1 in 32 would start with - or _
    assert all(i[0].isalnum() and len(i) == 16 for i in ids)
    assert len(set(ids)) == len(ids)
