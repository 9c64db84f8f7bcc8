"""A CAN bus without hardware: python-can's ``virtual`` interface.

Devices of one service on the same ``channel`` name share a bus (frames one sends, the
others receive), which is what tests of other parts and the benchmark use. It is
in-process only: buses in two processes never meet (use ``python-can`` with
``interface: udp_multicast`` for that).
"""

from __future__ import annotations

import can

from .interface import CanConfig, CanDriver


class MockCanConfig(CanConfig):
    """``config:`` of a ``kind: can, driver: mock`` device."""

    channel: str = "mock"  # devices on the same channel (in one service) share a bus
    fd: bool = True


class MockCan(CanDriver):
    Config = MockCanConfig
    config: MockCanConfig

    def open_bus(self) -> can.BusABC:
        return can.Bus(interface="virtual", channel=self.config.channel,
                       receive_own_messages=False)  # fmt: skip

    def describe(self) -> dict[str, object]:
        return {"interface": "virtual", "channel": self.config.channel}
