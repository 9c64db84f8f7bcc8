"""A simulated ECU: answers UDS ReadDataByIdentifier (0x22) over ISO-TP on a python-can bus.

    python -m tests.can.ecu --interface udp_multicast --channel 239.74.163.2 [--fd]

Request ``22 F1 A0`` gets ``62 F1 A0`` + 4096 bytes (byte i is i*7 mod 256); ``22 F1 90``
a 17-byte VIN; any other DID the negative response ``7F 22 31``. Prints "ready" once it
listens. Runs until killed.
"""

from __future__ import annotations

import argparse
import sys

import can
import isotp

BIG = bytes(i * 7 % 256 for i in range(4096))
DIDS = {0xF1A0: BIG, 0xF190: b"LABCTLSIMULATED01"}


def answer(request: bytes) -> bytes:
    if len(request) == 3 and request[0] == 0x22:
        did = int.from_bytes(request[1:3], "big")
        if did in DIDS:
            return b"\x62" + request[1:3] + DIDS[did]
        return b"\x7f\x22\x31"
    return b"\x7f" + request[:1] + b"\x11"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--interface", default="udp_multicast")
    p.add_argument("--channel", default="239.74.163.2")
    p.add_argument("--rxid", type=lambda s: int(s, 16), default=0x7E0)
    p.add_argument("--txid", type=lambda s: int(s, 16), default=0x7E8)
    p.add_argument("--fd", action="store_true")
    a = p.parse_args()
    bus = can.Bus(interface=a.interface, channel=a.channel)
    address = isotp.Address(isotp.AddressingMode.Normal_11bits, txid=a.txid, rxid=a.rxid)
    params = {"max_frame_size": 1 << 16, "blocking_send": True, "can_fd": a.fd,
              "tx_data_length": 64 if a.fd else 8, "stmin": 0, "blocksize": 8}  # fmt: skip
    stack = isotp.CanStack(bus, address=address, params=params)
    stack.start()
    print("ready", flush=True)
    try:
        while True:
            request = stack.recv(block=True, timeout=1.0)
            if request is not None:
                stack.send(answer(bytes(request)), send_timeout=10)
                print(f"answered {bytes(request).hex()}", flush=True)
    finally:
        stack.stop()
        bus.shutdown()


if __name__ == "__main__":
    sys.exit(main())
