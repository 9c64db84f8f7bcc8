"""Storage devices in the sync SDK: ``flash``, ``write`` and ``dump`` with progress.

    with lab.lease("board=rpi4") as lease:
        lease.storage.flash("image.wic.zst", verify=True, progress=print)

A local file is uploaded through the broker on an ``upload`` stream (compressed files
travel compressed; an uncompressed image with a bmap sends only its mapped ranges); a
URI (``https://…``, ``s3://…``, ``fs:///…``, ``NAME:path``) is fetched by the service.
Progress comes from the device's ``device.<name>.progress`` events, on a helper thread:
the callback must not block for long.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import zmq

from . import core, protocol
from .bmap import COMPRESSED_SUFFIXES, Bmap, detect_compression, parse_bmap
from .client import BusClient
from .errors import BadArguments, DriverError, LabError, StreamClosed
from .lab import Device

Progress = Callable[[dict[str, Any]], None]
#: bytes per upload data frame: fewer, larger frames cost every hop less CPU
UPLOAD_FRAME = int(os.environ.get("LABCTL_UPLOAD_FRAME", 1 << 20))
READ_CHUNK = 1 << 20
ASK_AFTER = 1.0  # silent seconds before asking the broker whether it is still there
URI_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://|^[a-zA-Z][a-zA-Z0-9_-]*:(?!//).")


class UploadLost(DriverError):
    """The broker (or the service) went away while an upload ran."""

    code = "upload-lost"


def is_remote(source: str) -> bool:
    """A URI or ``operator:path`` (fetched by the service) rather than a local file."""
    return not os.path.exists(source) and bool(URI_RE.match(source))


class StorageDevice(Device):
    """A ``storage`` device proxy: the exported methods plus client-side ``write``/``flash``."""

    def write(  # type: ignore[override]
        self,
        source: str | os.PathLike[str],
        sha256: str | None = None,
        bmap: str | os.PathLike[str] | None = "auto",
        verify: bool = False,
        switch: bool = False,
        progress: Progress | None = None,
        timeout: float = 3600.0,
        *,
        frame_size: int = UPLOAD_FRAME,
    ) -> dict[str, Any]:
        """Write an image (local path or URI); returns the service's record of the write.

        ``bmap``: "auto" (IMAGE.bmap beside it), "none", or a path to a bmap file.
        ``frame_size``: bytes per upload frame (fewer, larger frames cost every hop less
        CPU; 1 MiB measured faster than 64 KiB; env LABCTL_UPLOAD_FRAME). Raises
        the service's error (corrupt source at byte N, sha256 or verify mismatch, card at
        the DUT without ``switch``, image larger than the card).
        """
        src = str(source)
        with _ProgressFeed(self, progress):
            if is_remote(src):
                if bmap in (None, "none", "auto"):
                    bmap_arg = bmap or "none"
                else:  # a local bmap file for a remote image: send its text
                    bmap_arg = Path(bmap).read_text()
                kwargs = {"sha256": sha256, "bmap": bmap_arg, "verify": verify, "switch": switch}
                return _watched_call(self, "write", [src], kwargs, timeout)  # type: ignore[no-any-return]
            return _upload(self, Path(src), sha256, bmap, verify, switch, timeout, frame_size)

    def flash(
        self,
        source: str | os.PathLike[str],
        sha256: str | None = None,
        bmap: str | os.PathLike[str] | None = "auto",
        verify: bool = False,
        progress: Progress | None = None,
        timeout: float = 3600.0,
    ) -> dict[str, Any]:
        """The everyday path: card to the host, write (and verify), card to the DUT.

        The card goes to the DUT only when the write succeeded; on failure it stays at
        the host and the error is raised.
        """
        self.call("host")
        result = self.write(source, sha256, bmap, verify, False, progress, timeout)
        self.call("dut")
        result["state"] = "dut"
        return result

    def dump(self, dest: str | os.PathLike[str], size: int | None = None) -> int:
        """Copy the card (or its first ``size`` bytes) to a local file; returns bytes."""
        args = {} if size is None else {"size": int(size)}
        n = 0
        with open(dest, "wb") as out, self.stream("dump", write=False, resume=0, **args) as s:
            for chunk in s:
                out.write(chunk)
                n += len(chunk)
            error = getattr(s, "error", None)  # the service's typed error (card at the DUT)
            if error is not None:
                raise error
            result = getattr(s, "result", None)
            if not isinstance(result, dict) or result.get("bytes") != n:
                raise StreamClosed(f"dump of {self.name} ended early: {s.closed_reason}")
        return n


# -- uploads ---------------------------------------------------------------------------------
def _find_bmap(path: Path, bmap: Any) -> tuple[Bmap, str] | None:
    """The bmap to use and its text: the given file, or IMAGE.bmap beside the image
    (compression suffixes stripped one at a time), or none."""
    if bmap in (None, "none"):
        return None
    if bmap != "auto":
        text = Path(bmap).read_text()
        return parse_bmap(text), text
    candidates = [Path(str(path) + ".bmap")]
    stem = str(path)
    while stem.endswith(COMPRESSED_SUFFIXES):
        stem = stem.rsplit(".", 1)[0]
        candidates.append(Path(stem + ".bmap"))
    for cand in candidates:
        if cand.is_file():
            text = cand.read_text()
            return parse_bmap(text), text
    return None


def _chunks(path: Path, spans: list[tuple[int, int]] | None) -> Iterator[bytes]:
    with open(path, "rb", buffering=0) as f:
        if spans is None:
            while chunk := f.read(READ_CHUNK):
                yield chunk
            return
        for start, length in spans:
            f.seek(start)
            left = length
            while left:
                chunk = f.read(min(left, READ_CHUNK))
                if not chunk:
                    raise BadArguments(f"{path} is shorter than its bmap says")
                left -= len(chunk)
                yield chunk


def _upload(
    dev: StorageDevice,
    path: Path,
    sha256: str | None,
    bmap: Any,
    verify: bool,
    switch: bool,
    timeout: float,
    frame_size: int,
) -> dict[str, Any]:
    if not path.is_file():
        raise BadArguments(f"{path}: no such file (and not a URI like https://, s3://, fs://)")
    size = path.stat().st_size
    with open(path, "rb") as f:
        compression = detect_compression(f.read(8))
    found = _find_bmap(path, bmap)
    parsed = found[0] if found else None
    args: dict[str, Any] = {"source": path.name, "verify": verify, "switch": switch}
    if sha256:
        args["sha256"] = sha256
    spans = None
    if found is not None:
        args["bmap"] = found[1]
        if compression == "none":  # send only what the bmap maps
            spans = [(start, length) for start, length, _ in found[0].spans()]
            args["ranges_only"] = True
            size = sum(length for _, length in spans)
    if compression == "none":
        args["image_size"] = parsed.image_size if parsed else size
    args["size"] = size
    # resume=0: an upload cannot be reopened where it stopped (the service's write is gone)
    with dev.stream("upload", write=True, resume=0, frame_size=frame_size, **args) as up:
        for chunk in _chunks(path, spans):
            up.write(chunk)  # raises the service's typed error if it stopped early
        return up.finish(timeout)  # type: ignore[no-any-return]


def _watched_call(
    dev: StorageDevice, method: str, args: list[Any], kwargs: dict[str, Any], timeout: float
) -> Any:
    """A long call (a URI write runs for minutes) on its own socket that notices a broker
    gone silent within seconds instead of waiting out ``timeout``."""
    client = BusClient(dev._lab.address, keys=dev._lab.client.keys or False)
    try:
        msg = protocol.Request.call(dev.name, method, args, kwargs, dev.lease_id)
        rid, frames = core.Requests().frames(msg, timeout)
        client.sock.send_multipart(frames)
        deadline = time.monotonic() + timeout
        heard = time.monotonic()
        while True:
            if client.sock.poll(200, zmq.POLLIN):
                got = protocol.decode(client.sock.recv_multipart())
                heard = time.monotonic()
                if got.id != rid:
                    continue
                done, value = core.settle(got)  # raises the typed error
                if done:
                    return value
            elif time.monotonic() - heard > ASK_AFTER:
                try:
                    dev._lab.client.call("hello", timeout=3.0)
                except LabError as exc:
                    raise UploadLost(
                        f"{dev.name}.{method}: the broker at {dev._lab.address} stopped "
                        f"answering ({exc.message}); the service marks the write failed"
                    ) from None
                heard = time.monotonic()
            if time.monotonic() > deadline:
                raise core.timeout_error(dev._lab.address, msg, timeout, True)
    finally:
        client.close()


# -- progress --------------------------------------------------------------------------------
class _ProgressFeed:
    """Calls ``progress(body)`` for each ``device.<name>.progress`` event while a write
    runs, from a helper thread with its own SUB socket."""

    def __init__(self, dev: StorageDevice, progress: Progress | None) -> None:
        self.dev, self.progress = dev, progress
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._final = threading.Event()

    def __enter__(self) -> _ProgressFeed:
        if self.progress is None:
            return self
        from .events import EventStream

        stream = EventStream(self.dev._lab, f"device.{self.dev.name}.progress")  # live now
        self._thread = threading.Thread(
            target=self._run, args=(stream,), name="labctl-progress", daemon=True
        )
        self._thread.start()
        return self

    def _run(self, stream: Any) -> None:
        try:
            while not self._stop.is_set():
                try:
                    ev = stream.next_event(0.2)
                except LabError:
                    continue
                body = ev.get("body") or {}
                try:
                    self.progress(body)  # type: ignore[misc]
                except Exception:
                    pass
                if body.get("phase") in ("done", "failed"):
                    self._final.set()
        finally:
            stream.close()

    def __exit__(self, *exc: Any) -> None:
        if self._thread is None:
            return
        if exc[0] is None:
            self._final.wait(1.0)  # the last event may trail the reply a little
        self._stop.set()
        self._thread.join(2.0)
