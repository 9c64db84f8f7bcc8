"""ISO-TP between two devices on one virtual bus: every addressing mode, FD, and the rules
for who may send flow control."""

from __future__ import annotations

import threading

import pytest
import trio

from labctl.errors import LeaseRequired

from ..harness import LabHarness, trio_test, wait_until

PAYLOAD = bytes(i % 251 for i in range(1500))

MODES = [
    ({"addressing": "normal", "txid": 0x7E0, "rxid": 0x7E8}, {"txid": 0x7E8, "rxid": 0x7E0}),
    ({"addressing": "normal", "txid": 0x18DA10F1, "rxid": 0x18DAF110}, {"txid": 0x18DAF110, "rxid": 0x18DA10F1}),
    ({"addressing": "extended", "txid": 0x6F1, "rxid": 0x610, "target_address": 0x10, "source_address": 0xF1},
     {"txid": 0x610, "rxid": 0x6F1, "target_address": 0xF1, "source_address": 0x10}),
    ({"addressing": "mixed", "txid": 0x700, "rxid": 0x701, "address_extension": 0x55},
     {"txid": 0x701, "rxid": 0x700, "address_extension": 0x55}),
    ({"addressing": "mixed_29", "target_address": 0x10, "source_address": 0xF1, "address_extension": 0x55},
     {"target_address": 0xF1, "source_address": 0x10, "address_extension": 0x55}),
    ({"addressing": "normal_fixed_29", "target_address": 0x10, "source_address": 0xF1},
     {"target_address": 0xF1, "source_address": 0x10}),
    ({"addressing": "normal", "txid": 0x7E0, "rxid": 0x7E8, "fd": True, "padding": 0xCC},
     {"txid": 0x7E8, "rxid": 0x7E0, "fd": True}),
]  # fmt: skip


def _name(opts: dict) -> str:
    if "addressing" not in opts:
        return "peer"
    wide = opts["addressing"].endswith("29") or opts.get("txid", 0) > 0x7FF
    return (
        opts["addressing"]
        + ("-29" if wide and "29" not in opts["addressing"] else "")
        + ("-fd" if opts.get("fd") else "")
    )


@pytest.mark.parametrize(("sender", "receiver"), MODES, ids=_name)
def test_a_pdu_crosses_in_every_addressing_mode(
    can_lab: LabHarness, sender: dict, receiver: dict
) -> None:
    lab = can_lab.lab()
    with lab.lease("name=can-a") as la, lab.lease("name=can-b") as lb:
        addressing = sender["addressing"]
        with lb.can.isotp(**{**receiver, "addressing": addressing, "wait": 10}) as session:
            wait_until(
                lambda: lab.device("can-b").state()["isotp_sessions"] == 1, 10, "the session"
            )
            assert la.can.isotp_send(PAYLOAD, wait=10, **sender) == len(PAYLOAD)
            assert session.recv(10) == PAYLOAD
            # and back, over the same session, answered by a one-shot receive on can-a
            got: list = []
            other = can_lab.lab().device("can-a", lease=la.id)  # a socket of its own for the thread
            t = threading.Thread(target=lambda: got.append(other.isotp_recv(wait=10, **sender)))
            t.start()
            wait_until(lambda: lab.device("can-a").state()["isotp_sessions"] == 1, 10, "isotp_recv")
            session.send(PAYLOAD[:100])
            t.join(20)
    assert got == [PAYLOAD[:100]]


def test_isotp_needs_the_lease_and_a_read_only_stream_only_listens(can_lab: LabHarness) -> None:
    lab = can_lab.lab()
    opts = {"txid": 0x7E8, "rxid": 0x7E0}
    with pytest.raises(LeaseRequired):
        lab.device("can-b").isotp_recv(**opts)
    with lab.device("can-b").isotp(**opts) as sniff, lab.lease("name=can-a") as la:
        # nobody answers flow control: the sender gives up, the listener saw only the start
        with pytest.raises(Exception, match="ISO-TP|within"):
            la.can.isotp_send(PAYLOAD, wait=0.5, txid=0x7E0, rxid=0x7E8)
        la.can.isotp_send(b"\x22\xf1\x90", txid=0x7E0, rxid=0x7E8)  # a single frame needs none
        assert sniff.recv(5) == b"\x22\xf1\x90"


@trio_test
async def test_frames_are_an_async_iterator_too(can_lab: LabHarness) -> None:
    lab = can_lab.lab()
    got = []
    with lab.device("can-b").frames() as frames, lab.lease("name=can-a") as lease:
        async with trio.open_nursery() as nursery:

            async def read() -> None:
                async for msg in frames:
                    got.append(msg.arbitration_id)
                    if len(got) == 3:
                        nursery.cancel_scope.cancel()

            nursery.start_soon(read)
            for ident in (1, 2, 3):
                await trio.to_thread.run_sync(lease.can.send, ident, b"")
    assert got == [1, 2, 3]
