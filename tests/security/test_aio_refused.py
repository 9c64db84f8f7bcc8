"""The trio SDK tells a refused or missing key at once, as ``Lab`` does: the one line
``BrokerUnreachable`` (CLI exit 5) within a fraction of a second, not after its timeout.

A real ``--curve`` broker on 127.0.0.1 (tests/security/test_curve.py's helpers); every
client here gets a timeout far above the time allowed for the refusal, so a pass means
the handshake watch spoke, not a timeout.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
import trio
import trio.testing

from labctl.aio import AsyncDevice, AsyncLab
from labctl.errors import BrokerUnreachable
from labctl.keys import ClientKeys, client_keys, own_key

from ..harness import LabHarness, trio_test
from .test_curve import CurveKeys, entry, start_curve_broker

TIMEOUT = 8.0  # what the clients here would wait without the handshake watch
TOLD_WITHIN = 1.5  # what a refused key may take (the sync SDK: a few ms)
#: no keys: libzmq may report the mechanism mismatch as bare drops and dial again until it
#: says so (Lab and AsyncLab alike: median 0.13 s, 1.5 s at worst in 30 tries)
KEYLESS_WITHIN = 3.0


@dataclass
class CurveBroker:
    """A running ``--curve`` broker: its bus address and the keys around it."""

    bus: str
    keys: CurveKeys

    def dial_as(self, name: str) -> ClientKeys:
        found = client_keys(str(self.keys.broker_key), name)
        assert found is not None
        return found

    def refusal(self, name: str) -> str:
        """The line the sync SDK and the CLI give for ``name``'s unknown key."""
        key = own_key(name).public.decode()
        return (
            f"the broker at {self.bus} refused key {key}: not authorized "
            "(ask the lab admin to add it to the broker's authorized_keys)"
        )


@pytest.fixture
def broker(tcp_harness: LabHarness, monkeypatch: pytest.MonkeyPatch) -> CurveBroker:
    """A CURVE broker that lets alice in; bob has a key nobody authorized."""
    ck = CurveKeys(tcp_harness.root)
    ck.authorize(entry(ck.make("alice"), "alice"))
    ck.make("bob")
    start_curve_broker(tcp_harness, ck, monkeypatch)
    return CurveBroker(tcp_harness.bus, ck)


async def told(call: Callable[[], Awaitable[object]]) -> tuple[BrokerUnreachable, float]:
    """The error ``call`` raises, and how long it took."""
    started = trio.current_time()
    with pytest.raises(BrokerUnreachable) as err:
        await call()
    return err.value, trio.current_time() - started


@trio_test
async def test_an_unknown_key_is_refused_in_one_line_at_once(broker: CurveBroker) -> None:
    lab = AsyncLab(broker.bus, timeout=TIMEOUT, keys=broker.dial_as("bob"))
    told_each: list[tuple[BrokerUnreachable, float]] = []

    async def devices() -> None:
        told_each.append(await told(lab.devices))

    async with lab:
        async with trio.open_nursery() as nursery:
            for _ in range(3):  # calls waiting together for the first answer: each is told
                nursery.start_soon(devices)
        assert [str(error) for error, _ in told_each] == [broker.refusal("bob")] * 3
        assert max(took for _, took in told_each) < TOLD_WITHIN, told_each
        # libzmq does not dial a refused socket again: a later call is told at once too
        error, took = await told(lab.hello)
        assert str(error) == broker.refusal("bob") and took < TOLD_WITHIN


@trio_test
async def test_no_keys_against_a_curve_broker_says_keys_are_required(broker: CurveBroker) -> None:
    async def hello() -> None:
        async with AsyncLab(broker.bus, timeout=TIMEOUT, keys=False) as lab:
            await lab.hello()

    error, took = await told(hello)  # out of the `async with` as it is, not in a group
    assert str(error) == (
        f"the broker at {broker.bus} requires CURVE keys: see `labctl keys` "
        "(LABCTL_BROKER_KEY, LABCTL_KEY)"
    )
    assert error.exit_code == 5  # the CLI's 'the broker did not answer'
    assert took < KEYLESS_WITHIN, f"told after {took:.2f}s"


@trio_test
async def test_a_stream_dialed_with_a_refused_key_is_told_at_once(broker: CurveBroker) -> None:
    """A stream has its own connection (AsyncByteStream): its open watches the handshake too."""
    lab = AsyncLab(broker.bus, timeout=TIMEOUT, keys=broker.dial_as("bob"))
    stream = AsyncDevice(lab, "pdu1.1", {}).stream("console")

    async def open_stream() -> None:
        async with stream:
            pass

    error, took = await told(open_stream)
    assert str(error) == broker.refusal("bob")
    assert took < TOLD_WITHIN, f"told after {took:.2f}s"


@trio_test
async def test_an_authorized_key_works_and_the_watch_ends_with_the_first_answer(
    broker: CurveBroker,
) -> None:
    started = time.monotonic()
    async with AsyncLab(broker.bus, timeout=TIMEOUT, keys=broker.dial_as("alice")) as lab:
        assert await lab.devices() == []
        await trio.testing.wait_all_tasks_blocked()
        assert lab.handshake.monitor is None  # answered: no monitor left, nothing per message
        assert (await lab.hello())["events"]
        async with lab.event_stream("device.*"):  # the events socket takes the key too
            pass
    assert time.monotonic() - started < TIMEOUT
