"""A serial console without a port: an echo loopback, and a byte generator for benchmarks.

Whatever is written (``send``, or a writable ``console`` stream) comes back on the
console, like a board with local echo, and lands in the scrollback (``log``). ``break``
and ``settings`` are accepted and recorded; ``status`` reports a connected port. Opening
the stream with ``{"generate": N}`` sends N bytes of a repeating pattern and closes: that
measures the stream path (service, broker, client) without a pty in the way.
"""

from __future__ import annotations

from typing import Any

import trio

from ..stream import StreamEnd
from .interface import CHUNK, SerialConfig, SerialDriver


class MockSerialConfig(SerialConfig):
    """``config:`` of a ``kind: serial, driver: mock`` device: the line settings only."""


class MockSerial(SerialDriver):
    Config = MockSerialConfig
    config: MockSerialConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.breaks: list[float] = []  # durations of the breaks sent, for tests
        self.applied: list[dict[str, Any]] = []  # settings applied to the "port"

    @property
    def port_url(self) -> str:
        return "mock://echo"

    async def start(self, nursery: trio.Nursery) -> None:
        self.connected(True)

    async def write_port(self, data: bytes) -> None:
        self.received(data)
        await trio.lowlevel.checkpoint()

    async def break_port(self, duration: float) -> None:
        self.breaks.append(duration)
        await trio.lowlevel.checkpoint()

    async def apply_port_settings(self, settings: dict[str, Any]) -> None:
        self.applied.append(dict(settings))
        await trio.lowlevel.checkpoint()

    async def open_stream(self, name: str, end: StreamEnd) -> None:
        total = (end.args or {}).get("generate")
        if name != "console" or not isinstance(total, int):
            await super().open_stream(name, end)
            return
        block = bytes(range(256)) * (CHUNK // 256)
        sent = 0
        while sent < total:
            n = min(CHUNK, total - sent)
            await end.send(block[:n])
            sent += n
        await end.close("generated")
