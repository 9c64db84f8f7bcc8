"""The trio SDK has all that Lab has: streams, uploads, consoles, events, attach."""

from __future__ import annotations

import signal
import sys

import pexpect
import pytest
import trio

from labctl.aio import AsyncLab, AsyncLease
from labctl.errors import BadArguments, BrokerUnreachable

from .harness import LabHarness, Proc, free_port, power_service, wait_until
from .test_uploads import SINK


@pytest.fixture
def lab2(harness: LabHarness) -> LabHarness:
    harness.start_broker()
    harness.start_service(power_service("pdu1", outlets=1))
    harness.start_service({"service": "con1", "kind": "serial", "driver": "mock",
                           "labels": {"dut": "rpi4-01"}})  # fmt: skip
    cfg = {"service": "sink1", "kind": "sink", "driver": "sink", "labels": {"dut": "board-9"}}
    path = harness.write_config(cfg)
    proc = Proc([sys.executable, str(SINK), str(path)], harness.root / "sink1.log", harness.env)
    harness.procs.append(proc.start())
    harness.wait_online(["sink1"])
    return harness


def test_async_console_expects_what_it_sent(lab2: LabHarness) -> None:
    async def main() -> None:
        async with AsyncLab(lab2.bus) as lab, lab.lease("dut=rpi4-01") as lease:
            assert await lease.power.on() == "on"
            async with lease.serial.console() as con:
                await con.sendline("echo hello")
                assert await con.expect(["nothing", r"hel+o"], timeout=5) == 1
                assert con.before == "echo " and con.after == "hello"
                await con.sendline("booting... Kernel panic")
                with pytest.raises(pexpect.TIMEOUT) as failed:
                    await con.expect_exact("never", timeout=0.2)
                assert "Kernel panic" in str(failed.value)  # what the console printed
                assert "Kernel panic" in con.before

    trio.run(main)


def test_async_upload_gets_the_verdict(lab2: LabHarness) -> None:
    async def main() -> None:
        async with AsyncLab(lab2.bus) as lab, lab.lease("dut=board-9") as lease:
            async with lease["sink1"].stream("upload") as up:
                await up.write(b"x" * (2 << 20))
                assert (await up.finish(timeout=10))["size"] == 2 << 20
            async with lease["sink1"].stream("upload", fail=True) as up:
                await up.write(b"abc")
                with pytest.raises(BadArguments, match="image rejected"):
                    await up.finish(timeout=10)

    trio.run(main)


def test_async_events_live_and_from_the_journal(lab2: LabHarness) -> None:
    async def main() -> None:
        async with AsyncLab(lab2.bus) as lab:
            async with lab.event_stream("device.pdu1.1.status") as events:
                await lab.one_shot("pdu1.1", "on")  # leases just for the call
                ev = await events.next_event(timeout=5)
                assert ev["topic"] == "device.pdu1.1.status" and ev["seq"] > 0
            async with lab.events("device.pdu1.1.*", since=60) as events:
                first = await events.next_event(timeout=5)  # journaled before we subscribed
                assert first["topic"].startswith("device.pdu1.1.")

    trio.run(main)


def test_async_attach_uses_and_keeps_a_lease_taken_elsewhere(lab2: LabHarness) -> None:
    lease_id = lab2.lab().lease("dut=rpi4-01", keepalive=False).id

    async def main() -> None:
        async with AsyncLab(lab2.bus) as lab:
            held = await lab.attach(lease_id)
            assert await held.power.on() == "on"
            assert await lab.group_label() == "dut"
            assert await lab.group_selector("con1") == "dut=rpi4-01"
            async with lab.write_access("con1", held) as same:
                assert same is held
            await held.release()
            assert (await lab.devices("name=pdu1.1"))[0]["lease"] is None

    trio.run(main)


def test_a_queued_async_lease_queues_again_after_a_broker_restart(harness: LabHarness) -> None:
    lab2 = harness
    lab2.start_broker()
    lab2.start_service(power_service("pdu1", outlets=1))
    holder = lab2.lab()
    held = holder.lease("dut=rpi4-01")

    async def main() -> None:
        queued, requeued, granted = trio.Event(), trio.Event(), trio.Event()

        def progress(update: dict[str, object]) -> None:
            if update.get("requeued"):
                requeued.set()
            elif update.get("position") == 1:
                queued.set()

        def restart_broker() -> None:
            assert lab2.broker is not None
            lab2.broker.kill(signal.SIGKILL)
            lab2.start_broker()  # forgets the queue; keeps the lease

        def queue_length() -> int:
            return len(holder.client.call("lease.list")["queue"])

        async with AsyncLab(lab2.bus, timeout=5) as lab, trio.open_nursery() as nursery:
            got: list[object] = []

            async def wait_for_it() -> None:
                got.append(await lab.acquire("dut=rpi4-01", wait="60s", progress=progress))
                granted.set()

            nursery.start_soon(wait_for_it)
            with trio.fail_after(10):
                await queued.wait()
            await trio.to_thread.run_sync(restart_broker)
            with trio.fail_after(20):
                await requeued.wait()
            await trio.to_thread.run_sync(
                lambda: wait_until(lambda: queue_length() == 1, 15, "the new queue entry")
            )
            held.release()
            with trio.fail_after(15):
                await granted.wait()
            (lease,) = got
            assert isinstance(lease, AsyncLease)
            assert lease.devices == ["pdu1.1"]
            await lease.release()

    trio.run(main)


def test_async_reader_is_told_when_the_serial_service_restarted(harness: LabHarness) -> None:
    cfg = {"service": "con1", "kind": "serial", "driver": "mock", "labels": {"dut": "b1"}}
    harness.start_broker()
    svc = harness.start_service(cfg)

    async def main() -> None:
        async with AsyncLab(harness.bus) as lab, lab.lease("dut=b1") as lease:
            async with lease.serial.stream("console", since=0) as stream:
                await lease.serial.send("before\n")  # the mock echoes what it is sent
                got = b""
                while b"before\n" not in got:
                    got += await stream.read_some(10)
                assert stream.restarts == []

                def restart() -> None:
                    svc.kill(signal.SIGKILL)
                    harness.wait_online(["con1"], online=False)
                    harness.start_service(cfg)

                await trio.to_thread.run_sync(restart)
                await lease.serial.send("after\n")
                got = b""
                while b"after\n" not in got:  # offset 0 of the new run, not skipped
                    got += await stream.read_some(30)
                assert got == b"after\n"
            (restart_event,) = stream.restarts
            assert restart_event["at"] == len(b"before\n") and restart_event["lost"] == 0

    trio.run(main)


def test_async_keys_typed_while_the_broker_is_down_arrive_once_it_is_back(
    harness: LabHarness,
) -> None:
    cfg = {"service": "con1", "kind": "serial", "driver": "mock", "labels": {"dut": "b1"}}
    harness.start_broker()
    harness.start_service(cfg)

    async def main() -> None:
        async with (
            AsyncLab(harness.bus) as lab,
            lab.lease("dut=b1") as lease,
            lease.serial.console() as con,  # the mock echoes what it is sent
        ):
            await con.sendline("one")
            await con.expect_exact("one\n", timeout=10)
            assert harness.broker is not None
            harness.broker.kill(signal.SIGKILL)
            await con.sendline("two")  # no broker: kept until the service counts it
            await con.sendline("three")
            await trio.to_thread.run_sync(harness.start_broker)
            await con.expect_exact("three\n", timeout=60)
            assert con.before == "two\n"  # in order, once
            await con.sendline("four")
            await con.expect_exact("four\n", timeout=10)
            assert con.before == ""

    trio.run(main)


def test_async_lab_without_a_broker_says_so_after_the_connect_timeout() -> None:
    from labctl.client import CONNECT_TIMEOUT

    async def main() -> None:
        async with AsyncLab(f"tcp://127.0.0.1:{free_port()}", timeout=60) as lab:
            started = trio.current_time()
            with pytest.raises(BrokerUnreachable, match="no answer from the broker"):
                await lab.devices()
            assert trio.current_time() - started < CONNECT_TIMEOUT + 2  # as Lab: not 60 s

    trio.run(main)
