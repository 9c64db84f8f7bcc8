"""Reading an image source: magic-byte detection and decompression with bounded memory.

Plain blocking code for the writer thread (see ``pipeline``). Every decoder's ``read(n)``
returns at most ``n`` bytes and ``b""`` at the clean end, so memory stays bounded whatever
the compression ratio; a corrupt or truncated source is an ``ImageError`` naming the byte
offset where it went wrong.
"""

from __future__ import annotations

import bz2
import lzma
import threading
import zlib
from typing import Any, Protocol

from labctl.bmap import detect_compression
from labctl.errors import DriverError

SOURCE_CHUNK = 256 * 1024  # compressed bytes read from the source per step
ZSTD_MAX_WINDOW = 1 << 27  # 128 MiB: zstd's default limit; a bomb cannot ask for more


class ImageError(DriverError):
    """The image (or its source) is wrong: corrupt, truncated, too big, checksum mismatch."""


class Aborted(Exception):
    """The write was stopped from outside (lease end, broker lost, service stopping)."""


class Reader(Protocol):
    def read(self, n: int) -> Any: ...


# -- the source: count what was consumed, peek at the magic --------------------------------
class CountingReader:
    """Wraps a source; ``consumed`` is how many source bytes were handed out so far."""

    def __init__(self, raw: Reader, abort: threading.Event) -> None:
        self.raw = raw
        self.abort = abort
        self.consumed = 0
        self._head: list[Any] = []

    def peek(self, n: int) -> bytes:
        buf = b"".join(bytes(x) for x in self._head)
        while len(buf) < n:
            more = self.raw.read(max(n - len(buf), SOURCE_CHUNK))
            if not more:
                break
            buf += bytes(more)
        self._head = [buf] if buf else []
        return buf[:n]

    def read(self, n: int) -> Any:
        if self.abort.is_set():
            raise Aborted("write aborted")
        if self._head:
            data = self._head.pop(0)
            if len(data) > n:
                self._head.insert(0, data[n:])
                data = data[:n]
        else:
            data = self.raw.read(n)
        self.consumed += len(data)
        return data


# -- decoders: read(n) gives at most n bytes, b"" at the clean end -------------------------
class Passthrough:
    def __init__(self, src: CountingReader) -> None:
        self.src = src

    def read(self, n: int) -> Any:
        return self.src.read(n)


class StdlibDecoder:
    """gzip (zlib), xz (lzma) and bz2, each bounded by ``max_length``; concatenated
    members/streams are followed like the command-line tools do."""

    def __init__(self, src: CountingReader, kind: str) -> None:
        self.src, self.kind = src, kind
        self.d: Any = self._new()
        self.pending = b""
        self.started_at = 0  # source offset where the current member began

    def _new(self) -> Any:
        if self.kind == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        if self.kind == "xz":
            return lzma.LZMADecompressor()
        return bz2.BZ2Decompressor()

    def _corrupt(self, exc: Exception) -> ImageError:
        at = self.src.consumed - len(self.pending)
        return ImageError(
            f"corrupt {self.kind} data at compressed byte offset {at} "
            f"(in the {SOURCE_CHUNK}-byte block from there): {exc}",
            {"offset": at},
        )

    def _truncated(self) -> ImageError:
        at = self.src.consumed
        return ImageError(
            f"truncated {self.kind} stream: the source ends at byte offset {at}, "
            "inside the compressed data",
            {"offset": at},
        )

    def read(self, n: int) -> Any:
        while True:
            if self.d.eof:
                rest = self.d.unused_data or self.pending or self.src.read(SOURCE_CHUNK)
                self.pending = b""
                if not rest:
                    return b""
                self.d, self.pending = self._new(), rest
            if self.kind == "gzip":
                if not self.pending:
                    self.pending = self.src.read(SOURCE_CHUNK)
                    if not self.pending:
                        raise self._truncated()
                try:
                    out = self.d.decompress(self.pending, n)
                except zlib.error as exc:
                    raise self._corrupt(exc) from None
                self.pending = self.d.unconsumed_tail
            else:
                data = b""
                if self.d.needs_input:
                    data = self.pending or self.src.read(SOURCE_CHUNK)
                    self.pending = b""
                    if not data:
                        raise self._truncated()
                try:
                    out = self.d.decompress(data, n)
                except (lzma.LZMAError, OSError, EOFError, ValueError) as exc:
                    self.pending = data
                    raise self._corrupt(exc) from None
            if out:
                return out


class ZstdFrames:
    """Follows zstd frame and block headers in the compressed bytes as they pass, so a
    source that ends inside a frame is caught (``zstandard``'s reader just stops)."""

    def __init__(self) -> None:
        self.need, self.state, self.skip = 4, "magic", 0
        self.buf = bytearray()
        self.checksum = False

    def feed(self, data: Any) -> None:
        view, i, n = memoryview(data), 0, len(data)
        while i < n:
            if self.skip:
                step = min(self.skip, n - i)
                self.skip -= step
                i += step
                continue
            take = min(self.need - len(self.buf), n - i)
            self.buf += view[i : i + take]
            i += take
            if len(self.buf) == self.need:
                head, self.buf = bytes(self.buf), bytearray()
                self._header(head)

    def _header(self, head: bytes) -> None:
        if self.state == "magic":
            magic = int.from_bytes(head, "little")
            if magic == 0xFD2FB528:
                self.state, self.need = "descriptor", 1
            elif magic & 0xFFFFFFF0 == 0x184D2A50:
                self.state, self.need = "skippable", 4
            else:
                self.state, self.need = "unknown", 1 << 62  # the decoder reports it
        elif self.state == "skippable":
            self.skip = int.from_bytes(head, "little")
            self.state, self.need = "magic", 4
        elif self.state == "descriptor":
            d = head[0]
            single = bool(d & 0x20)
            self.checksum = bool(d & 0x04)
            fcs = (1 if single else 0, 2, 4, 8)[d >> 6]
            self.skip = (0 if single else 1) + (0, 1, 2, 4)[d & 0x03] + fcs
            self.state, self.need = "block", 3
        elif self.state == "block":
            h = int.from_bytes(head, "little")
            last, btype, size = h & 1, (h >> 1) & 3, h >> 3
            self.skip = 1 if btype == 1 else size
            if last:
                self.skip += 4 if self.checksum else 0
                self.state, self.need = "magic", 4

    @property
    def clean(self) -> bool:
        """At a frame boundary (or in data the decoder itself rejects)."""
        return (self.state == "magic" and not self.buf and not self.skip) or self.state == "unknown"


class ZstdDecoder:
    """zstd through ``zstandard``'s pull reader: output bounded by ``read(n)``, window by
    ``ZSTD_MAX_WINDOW``; ``ZstdFrames`` notices a source cut inside a frame."""

    def __init__(self, src: CountingReader) -> None:
        import zstandard

        self.src = src
        self.frames = ZstdFrames()
        self._error = zstandard.ZstdError
        dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
        tracked = _Tracked(src, self.frames)
        self.reader = dctx.stream_reader(
            tracked,  # type: ignore[arg-type]  # any object with read(n) will do
            read_size=SOURCE_CHUNK,
            read_across_frames=True,
        )

    def read(self, n: int) -> Any:
        try:
            out = self.reader.read(n)
        except self._error as exc:
            at = self.src.consumed
            raise ImageError(
                f"corrupt zstd data at or before compressed byte offset {at}: {exc}",
                {"offset": at},
            ) from None
        if not out and not self.frames.clean:
            at = self.src.consumed
            raise ImageError(
                f"truncated zstd stream: the source ends at byte offset {at}, "
                "inside the compressed data",
                {"offset": at},
            )
        return out


class _Tracked:
    """What ``stream_reader`` pulls from: the source, seen by the frame tracker first."""

    def __init__(self, src: CountingReader, frames: ZstdFrames) -> None:
        self.src, self.frames = src, frames

    def read(self, n: int) -> Any:
        data = self.src.read(n)
        self.frames.feed(data)
        return data


def open_decoder(src: CountingReader) -> tuple[str, Any]:
    kind = detect_compression(src.peek(6))
    if kind == "none":
        return kind, Passthrough(src)
    if kind == "zstd":
        return kind, ZstdDecoder(src)
    return kind, StdlibDecoder(src, kind)


def zstd_content_size(head: bytes) -> int | None:
    """The decompressed size a zstd frame header declares, if it does."""
    try:
        import zstandard

        size = zstandard.frame_content_size(head)
    except Exception:
        return None
    return size if size >= 0 else None
