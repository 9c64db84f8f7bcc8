"""Any python-can interface, by config: socketcan in production, pcan, kvaser, vector, slcan,
udp_multicast (processes on one host or network), ...

Config: ``interface``, ``channel``, ``bitrate``, ``fd``, ``data_bitrate``; anything under
``options`` is passed to ``can.Bus`` unchanged (e.g. ``{receive_own_messages: false}``,
vendor timing parameters). What the interface refuses fails when the bus opens, and the
device is offline with python-can's reason until it opens.
"""

from __future__ import annotations

from typing import Any

import can
from pydantic import Field

from .interface import CanConfig, CanDriver


class PythonCanConfig(CanConfig):
    """``config:`` of a ``kind: can, driver: python-can`` device."""

    interface: str = "socketcan"
    channel: str | int | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class PythonCan(CanDriver):
    Config = PythonCanConfig
    config: PythonCanConfig

    def open_bus(self) -> can.BusABC:
        c = self.config
        kwargs: dict[str, Any] = {"interface": c.interface, "channel": c.channel}
        if c.bitrate is not None:
            kwargs["bitrate"] = c.bitrate
        if c.data_bitrate is not None:
            kwargs["data_bitrate"] = c.data_bitrate
        if c.fd:
            kwargs["fd"] = True
        return can.Bus(**{**kwargs, **c.options})

    def describe(self) -> dict[str, Any]:
        return {"interface": self.config.interface, "channel": self.config.channel}
