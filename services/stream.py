"""What a driver sees of one open byte stream (a console, a CAN frame feed, an upload).

The runtime creates one ``StreamEnd`` per stream a client opens on a device and runs the
driver's ``open_stream(name, end)`` in its own task; the task is cancelled when the
client closes the stream, its lease ends, or the broker goes away. Flow control is
credit-based: ``send`` waits until the reader has granted enough bytes.

An upload: the driver ``receive()``s until EndOfChannel (the client called ``finish()``),
then answers with ``close(result=...)`` or ``fail(error)``. Returning a value from
``open_stream`` closes with it as the result; raising closes with the error.
"""

from __future__ import annotations

from typing import Any, Protocol


class StreamEnd(Protocol):
    #: the arguments the client opened the stream with (e.g. ``{"since": 1234}``)
    args: dict[str, Any]
    #: whether this client may write (it holds the device's lease)
    writable: bool

    async def send(self, data: bytes, meta: dict[str, Any] | None = None) -> None:
        """Send bytes to the client; waits for credit. ``meta`` rides in the header."""
        ...

    async def receive(self) -> bytes:
        """Next bytes the client wrote (chunks of 64 KiB or more come as a read-only
        memoryview, not copied); raises ``trio.EndOfChannel`` when the client closes
        or ends its data (``finish()``); after the latter the stream stays open for the
        verdict: ``close(result=...)`` or ``fail(error)``."""
        ...

    async def close(self, reason: str = "", *, result: Any = ...) -> None:
        """End the stream from the device side; the client sees ``reason``, and its
        ``finish()`` returns ``result`` (None when not given)."""
        ...

    async def fail(self, error: BaseException) -> None:
        """End the stream with an error; the client's ``finish()`` raises it typed (a
        LabError keeps its class, anything else becomes DriverError)."""
        ...
