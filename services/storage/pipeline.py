"""Writing an image: decompress (by magic bytes), follow the bmap, hash, write, verify.

Everything here is plain blocking code that runs in one worker thread per write: zlib,
lzma, bz2, zstd, hashlib and ``pwrite`` release the GIL, so the thread streams while the
service's trio loop keeps serving the bus. Memory stays bounded whatever the compression
ratio: every decoder is asked for at most ``CHUNK`` bytes at a time.
"""

from __future__ import annotations

import bz2
import hashlib
import lzma
import os
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from labctl.bmap import Bmap, detect_compression
from labctl.errors import DriverError

CHUNK = 1 << 20  # decompressed bytes per step
SOURCE_CHUNK = 256 * 1024  # compressed bytes read from the source per step
ZSTD_MAX_WINDOW = 1 << 27  # 128 MiB: zstd's default limit; a bomb cannot ask for more


class ImageError(DriverError):
    """The image (or its source) is wrong: corrupt, truncated, too big, checksum mismatch."""


class Aborted(Exception):
    """The write was stopped from outside (lease end, broker lost, service stopping)."""


class Reader(Protocol):
    def read(self, n: int) -> Any: ...


def mib(n: int) -> str:
    return f"{n} bytes ({n / (1 << 20):.1f} MiB)"


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


# -- what the service sees of a running write ----------------------------------------------
@dataclass
class Progress:
    """Counters the writer thread updates and the service's ticker reads."""

    phase: str = "write"
    done: int = 0  # image bytes processed
    total: int | None = None  # image size, when known
    source_done: int = 0
    source_total: int | None = None
    started: float = field(default_factory=time.monotonic)
    phase_started: float = field(default_factory=time.monotonic)

    def enter(self, phase: str, total: int | None) -> None:
        self.phase, self.done, self.total = phase, 0, total
        self.phase_started = time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.phase_started, 1e-6)
        rate = self.done / elapsed
        eta = None
        if self.total and self.done:
            eta = (self.total - self.done) / rate if rate else None
        elif self.source_total and self.source_done:
            eta = elapsed * (self.source_total - self.source_done) / self.source_done
        return {
            "phase": self.phase,
            "bytes": self.done,
            "total": self.total,
            "source_bytes": self.source_done,
            "source_total": self.source_total,
            "rate": round(rate),
            "eta": None if eta is None else round(eta, 1),
        }


@dataclass
class WritePlan:
    source: str  # what the user named (redacted), for info() and errors
    sha256: str | None = None
    bmap: Bmap | None = None
    ranges_only: bool = False  # the source holds only the bmap's mapped ranges, in order
    verify: bool = False
    image_size: int | None = None  # decompressed size when the client knows it
    source_size: int | None = None
    sync_every: int = 0  # fdatasync after this many bytes (0: only at the end)
    write_rate: int = 0  # bytes/s the target takes at most (a simulated slow card); 0: any


@dataclass
class Written:
    sha256: str
    bytes: int  # bytes written to the target
    image_bytes: int  # decompressed image bytes seen
    compression: str
    spans: list[tuple[int, int, str, str | None]]  # offset, length, digest, range label
    source_bytes: int = 0  # bytes taken from the source (what travelled, for an upload)


class ImageWriter:
    """Streams one decompressed image onto an open target file descriptor."""

    def __init__(
        self,
        fd: int,
        target_size: int,
        plan: WritePlan,
        progress: Progress,
        abort: threading.Event,
    ) -> None:
        self.fd, self.target_size, self.plan = fd, target_size, plan
        self.progress, self.abort = progress, abort
        self.full = hashlib.sha256()
        self.unsynced = 0
        self.paced = 0  # bytes written, for write_rate
        self.t0 = time.monotonic()

    def _check_size(self, end: int, at_least: bool = True) -> None:
        if end > self.target_size:
            image = f"at least {mib(end)}" if at_least else mib(end)
            raise ImageError(
                f"the image does not fit: the target holds {mib(self.target_size)}, "
                f"the image is {image}",
                {"target_size": self.target_size, "image_size": end},
            )

    def _pwrite(self, data: Any, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view, offset = view[n:], offset + n
        self.unsynced += len(data)
        if self.plan.write_rate:
            self.paced += len(data)
            ahead = self.paced / self.plan.write_rate - (time.monotonic() - self.t0)
            if ahead > 0:
                self.abort.wait(ahead)  # a slow card; wakes at once when aborted
        if self.plan.sync_every and self.unsynced >= self.plan.sync_every:
            os.fdatasync(self.fd)  # bounds dirty data: no minutes-long final sync
            self.unsynced = 0

    def run(self, src: CountingReader) -> Written:
        plan = self.plan
        compression, dec = open_decoder(src)
        if plan.image_size is None and compression == "zstd":
            plan.image_size = zstd_content_size(src.peek(18))
        if plan.bmap is not None:
            self._check_size(plan.bmap.image_size, at_least=False)
            self.progress.total = plan.bmap.image_size
        elif plan.image_size is not None:
            self._check_size(plan.image_size, at_least=False)
            self.progress.total = plan.image_size
        self.progress.source_total = plan.source_size
        if plan.bmap is None:
            written = self._plain(src, dec)
        elif plan.ranges_only:
            written = self._ranges_only(src, dec, plan.bmap)
        else:
            written = self._bmap_stream(src, dec, plan.bmap)
        written.compression = compression
        written.source_bytes = src.consumed
        if plan.sha256 and plan.sha256.lower() != written.sha256:
            raise ImageError(
                f"sha256 mismatch: expected {plan.sha256.lower()}, "
                f"the image as written has {written.sha256}",
                {"expected": plan.sha256, "actual": written.sha256},
            )
        return written

    def _next(self, src: CountingReader, dec: Any, n: int = CHUNK) -> Any:
        if self.abort.is_set():
            raise Aborted("write aborted")
        data = dec.read(n)
        self.progress.source_done = src.consumed
        return data

    def _plain(self, src: CountingReader, dec: Any) -> Written:
        pos = 0
        while True:
            data = self._next(src, dec)
            if not data:
                break
            self._check_size(pos + len(data))
            self.full.update(data)
            self._pwrite(data, pos)
            pos += len(data)
            self.progress.done = pos
        digest = self.full.hexdigest()
        return Written(digest, pos, pos, "", [(0, pos, digest, None)])

    def _bmap_stream(self, src: CountingReader, dec: Any, bmap: Bmap) -> Written:
        """The whole image streams by; only bytes inside mapped ranges are written."""
        spans = bmap.spans()
        out: list[tuple[int, int, str, str | None]] = []
        i, pos, written = 0, 0, 0
        h: Any = None
        while True:
            data = self._next(src, dec)
            if not data:
                break
            view = memoryview(data)
            self.full.update(view)
            end = pos + len(view)
            while i < len(spans):
                start, length, rng = spans[i]
                if start >= end:
                    break
                a, b = max(start, pos), min(start + length, end)
                if a == start:
                    h = hashlib.new(bmap.checksum_type or "sha256")
                piece = view[a - pos : b - pos]
                self._pwrite(piece, a)
                h.update(piece)
                written += len(piece)
                if start + length > end:
                    break
                out.append(self._range_done(bmap, start, length, rng, h))
                i += 1
            pos = end
            self.progress.done = pos
        if i < len(spans):
            raise ImageError(
                f"the image ends at byte {pos}, before bmap range {spans[i][2].label()} "
                f"(the bmap describes a {mib(bmap.image_size)} image)"
            )
        return Written(self.full.hexdigest(), written, pos, "", out)

    def _ranges_only(self, src: CountingReader, dec: Any, bmap: Bmap) -> Written:
        """The source is the mapped ranges back to back (an uncompressed upload with a
        bmap): write each at its offset; holes hash as zeros for the image digest."""
        zeros = bytes(CHUNK)
        out: list[tuple[int, int, str, str | None]] = []
        pos = written = 0
        for start, length, rng in bmap.spans():
            if self.plan.sha256:
                self._hash_zeros(zeros, start - pos)
            h = hashlib.new(bmap.checksum_type or "sha256")
            left = length
            while left:
                data = self._next(src, dec, min(left, CHUNK))
                if not data:
                    raise ImageError(
                        f"the upload ended inside bmap range {rng.label()} "
                        f"({left} of its {length} bytes missing)"
                    )
                off = start + length - left
                self._pwrite(data, off)
                h.update(data)
                if self.plan.sha256:
                    self.full.update(data)
                left -= len(data)
                written += len(data)
                self.progress.done = off + len(data)
            out.append(self._range_done(bmap, start, length, rng, h))
            pos = start + length
        if self.plan.sha256:
            self._hash_zeros(zeros, bmap.image_size - pos)
        extra = self._next(src, dec, 1)
        if extra:
            raise ImageError("the upload holds more bytes than the bmap's mapped ranges")
        digest = self.full.hexdigest() if self.plan.sha256 else ""
        return Written(digest, written, bmap.image_size, "", out)

    def _hash_zeros(self, zeros: bytes, n: int) -> None:
        while n > 0:
            step = min(n, len(zeros))
            self.full.update(memoryview(zeros)[:step])
            n -= step

    @staticmethod
    def _range_done(bmap: Bmap, start: int, length: int, rng: Any, h: Any) -> Any:
        digest = h.hexdigest()
        if rng.checksum and digest != rng.checksum:
            raise ImageError(
                f"bmap range {rng.label()} (bytes {start}-{start + length - 1}) has "
                f"{bmap.checksum_type} {digest}, the bmap says {rng.checksum}",
                {"range": rng.label()},
            )
        return (start, length, digest, rng.label())

    def verify(self, written: Written) -> None:
        """Read the written spans back from the target (page cache dropped first, where
        the kernel allows) and compare their digests with what was written."""
        total = sum(length for _, length, _, _ in written.spans)
        self.progress.enter("verify", total)
        try:
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass
        algo = self.plan.bmap.checksum_type if self.plan.bmap else "sha256"
        for start, length, digest, label in written.spans:
            h = hashlib.new(algo or "sha256")
            off, left = start, length
            while left:
                if self.abort.is_set():
                    raise Aborted("verify aborted")
                data = os.pread(self.fd, min(left, CHUNK), off)
                if not data:
                    break
                h.update(data)
                off += len(data)
                left -= len(data)
                self.progress.done += len(data)
            if h.hexdigest() != digest:
                where = f"bmap range {label}" if label else f"bytes {start}-{start + length - 1}"
                raise ImageError(
                    f"verify failed: {where} read back from the target differs from what was "
                    f"written ({h.hexdigest()} != {digest})"
                )


# -- the bridge from the bus (trio) to the writer thread -----------------------------------
class UploadPipe:
    """Chunks an upload stream task puts (trio side) and the writer thread reads.

    Holds at most ``limit`` bytes: past that ``put`` waits, the stream task stops taking
    input, the service grants no credit, and the client's writes stall: flow control from
    the medium back to the uploader.
    """

    def __init__(self, limit: int = 8 << 20) -> None:
        import trio

        self._trio = trio
        self._token = trio.lowlevel.current_trio_token()
        self._cond = threading.Condition()
        self._chunks: deque[Any] = deque()
        self._size = 0
        self._limit = limit
        self._eof = False
        self._error: BaseException | None = None
        self._space: Any = None

    async def put(self, data: Any) -> None:
        with self._cond:
            self._chunks.append(data)
            self._size += len(data)
            self._cond.notify()
            wait = None
            if self._size >= self._limit and self._error is None:
                wait = self._space = self._trio.Event()
        if wait is not None:
            await wait.wait()

    def finish(self) -> None:
        with self._cond:
            self._eof = True
            self._cond.notify()

    def abort(self, error: BaseException) -> None:
        with self._cond:
            self._error = error
            self._cond.notify()
            space, self._space = self._space, None
        if space is not None:
            space.set()

    def read(self, n: int) -> Any:
        with self._cond:
            while not self._chunks and not self._eof and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            if not self._chunks:
                return b""
            data = self._chunks.popleft()
            if len(data) > n:
                view = memoryview(data)
                self._chunks.appendleft(view[n:])
                data = view[:n]
            self._size -= len(data)
            if self._space is not None and self._size < self._limit // 2:
                space, self._space = self._space, None
                self._token.run_sync_soon(space.set)
            return data
