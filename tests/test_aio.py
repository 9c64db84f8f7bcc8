"""The trio SDK has all that Lab has: streams, uploads, consoles, events, attach."""

from __future__ import annotations

import sys

import pexpect
import pytest
import trio

from labctl.aio import AsyncLab
from labctl.errors import BadArguments

from .harness import LabHarness, Proc, power_service
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
                with pytest.raises(pexpect.TIMEOUT):
                    await con.expect_exact("never", timeout=0.2)

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
