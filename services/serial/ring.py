"""The console scrollback: the last N bytes a port produced, addressed by absolute offset.

Offset 0 is the first byte the service ever read from the port; offsets keep counting
across reconnects, so a client that saw bytes up to offset X can ask for ``X`` onwards
later and get exactly what it missed, or learn how much of it was overwritten.
"""

from __future__ import annotations

DEFAULT_SIZE = 1 << 20


class ScrollbackRing:
    """A fixed-size circular byte buffer; ``start`` and ``end`` are absolute offsets.

    Bytes in ``[start, end)`` are kept; older ones are overwritten by newer ones. Copies
    are done a slice at a time (at most two per call), never a byte at a time.
    """

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        if size <= 0:
            raise ValueError("ring size must be positive")
        self.size = size
        self._buf = bytearray(size)
        self._end = 0

    @property
    def end(self) -> int:
        """Offset one past the newest byte (the total number of bytes ever appended)."""
        return self._end

    @property
    def start(self) -> int:
        """Offset of the oldest byte still kept."""
        return max(0, self._end - self.size)

    def __len__(self) -> int:
        return self._end - self.start

    def append(self, data: bytes | bytearray | memoryview) -> int:
        """Store ``data``; returns the offset of its first byte."""
        first = self._end
        view = memoryview(data).cast("B")
        n = len(view)
        if n > self.size:  # only the newest ``size`` bytes can be kept
            view = view[n - self.size :]
        pos = (first + n - len(view)) % self.size
        head = min(len(view), self.size - pos)
        self._buf[pos : pos + head] = view[:head]
        if head < len(view):
            self._buf[: len(view) - head] = view[head:]
        self._end = first + n
        return first

    def read(self, since: int, max_bytes: int | None = None) -> tuple[int, bytes]:
        """Bytes from ``since`` on, at most ``max_bytes``, as ``(offset, data)``.

        ``since`` is clamped to what is kept: below ``start`` the answer begins at
        ``start`` (the caller lost ``start - since`` bytes); at or past ``end`` it is
        ``(end, b"")``.
        """
        since = min(max(since, self.start), self._end)
        count = self._end - since
        if max_bytes is not None:
            count = min(count, max(0, max_bytes))
        if count == 0:
            return since, b""
        pos = since % self.size
        head = min(count, self.size - pos)
        view = memoryview(self._buf)
        if head == count:
            return since, bytes(view[pos : pos + count])
        return since, b"".join((view[pos:], view[: count - head]))

    def tail(self, n: int) -> tuple[int, bytes]:
        """The newest ``n`` bytes (fewer if fewer are kept), as ``(offset, data)``."""
        return self.read(self._end - max(0, n))
