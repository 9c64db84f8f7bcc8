"""Writing an image onto a target: follow the bmap, hash, write, verify, report progress.

Everything here is plain blocking code that runs in one worker thread per write: the
decoders (``decompress``), hashlib and ``pwrite`` release the GIL, so the thread streams
while the service's trio loop keeps serving the bus (``writer_thread`` is the bridge).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from labctl.bmap import Bmap

from .decompress import Aborted, CountingReader, ImageError, open_decoder, zstd_content_size

CHUNK = 1 << 20  # decompressed bytes per step


def mib(n: int) -> str:
    return f"{n} bytes ({n / (1 << 20):.1f} MiB)"


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


__all__ = [
    "Aborted",
    "CountingReader",
    "ImageError",
    "ImageWriter",
    "Progress",
    "WritePlan",
    "Written",
    "mib",
]
