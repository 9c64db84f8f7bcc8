"""A serial console without a port: an echo loopback, and a byte generator for benchmarks.

Whatever is written to the ``console`` stream (or sent with ``send``) comes back on it,
like a board with local echo. Opening the stream with ``{"generate": N}`` sends N bytes
of a repeating pattern and closes: that measures the stream path (service, broker,
client) without a pty in the way.
"""

from __future__ import annotations

from typing import Any

import trio

from ..driver import Driver, DriverConfig
from ..export import export
from ..stream import StreamEnd

CHUNK = 64 * 1024


class MockSerialConfig(DriverConfig):
    pass


class MockSerial(Driver):
    kind = "serial"
    Config = MockSerialConfig
    streams = {"console": {"writable": True}}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._send, self._echo = trio.open_memory_channel[bytes](64)
        self._offset = 0

    @export(mutating=True)
    async def send(self, data: str | bytes) -> int:
        """Write ``data``; it is echoed on the console."""
        raw = data.encode() if isinstance(data, str) else data
        await self._send.send(raw)
        return len(raw)

    async def open_stream(self, name: str, end: StreamEnd) -> None:
        total = end.args.get("generate")
        if isinstance(total, int):
            block = bytes(range(256)) * (CHUNK // 256)
            sent = 0
            while sent < total:
                n = min(CHUNK, total - sent)
                await end.send(block[:n])
                sent += n
            await end.close("generated")
            return
        async with trio.open_nursery() as nursery:
            if end.writable:
                nursery.start_soon(self._pump_input, end)
            async for data in self._echo:
                self._offset += len(data)
                await end.send(data, {"offset": self._offset - len(data)})

    async def _pump_input(self, end: StreamEnd) -> None:
        while True:
            try:
                data = await end.receive()
            except trio.EndOfChannel:
                return
            await self._send.send(data)
