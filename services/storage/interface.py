"""The storage interface: ``host``, ``dut``, ``off``, ``state``, ``write``, ``read``, ``info``,
and the ``upload`` (write) and ``dump`` (read) streams.

Drivers implement a few primitives (``select``, ``current_side``, ``target_path``); the
write path (sources, decompression, bmap, hashing, verification, progress, safety) is
written once here. Images are decompressed (``decompress``) and written (``pipeline``) by
a worker thread; the trio side (``writer_thread``) feeds it, reports progress, and stops
it when the lease ends or the broker goes away.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Annotated, Any, ClassVar

import trio
from pydantic import BeforeValidator, field_validator

from labctl.bmap import Bmap, parse_bmap, parse_size
from labctl.errors import BadArguments, DriverError, LabError, LeaseRequired

from ..driver import Driver, DriverConfig
from ..export import export
from .pipeline import Aborted, Progress, WritePlan, mib
from .sources import RemoteSource, bmap_candidates, is_uri, redact
from .writer_thread import UploadPipe, failure_text, write_image

SIDES = ("host", "dut", "off")
PROGRESS_EVERY = 0.5  # seconds between progress events: a few per second at most
READ_MAX = 8 << 20  # bytes one read() call may return; larger dumps use the stream


class WrongSide(DriverError):
    """The card is at the DUT: writing under a running board would corrupt it (travels as
    a DriverError, so every client raises a class it knows)."""


#: a byte count in a config: 67108864, "64MiB", "8GB"
ByteSize = Annotated[int, BeforeValidator(parse_size)]


class StorageConfig(DriverConfig):
    #: named opendal operators: {images: {scheme: s3, bucket: ..., endpoint: ...}}
    sources: dict[str, dict[str, Any]] = {}
    #: fdatasync after this many bytes (bounds dirty data on real cards); 0: only at the end
    sync_every: ByteSize = 0
    #: the final fsync must finish within this many seconds
    fsync_timeout: float = 300.0
    #: fsync at the end of a write (a mock on a scratch file may skip it)
    fsync: bool = True

    @field_validator("sources")
    @classmethod
    def _sources(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, op in v.items():
            if not isinstance(op, dict) or not op.get("scheme"):
                raise ValueError(f"source {name!r} needs a 'scheme' (s3, http, fs, ...)")
        return v


class StorageDriver(Driver):
    kind = "storage"
    Config: ClassVar[type[DriverConfig]] = StorageConfig
    config: StorageConfig
    streams = {"upload": {"writable": True}, "dump": {"writable": False}}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_write: dict[str, Any] | None = None
        self._side: str | None = None
        self._busy: str | None = None  # what is running: "write ..." or None
        self._abort: threading.Event | None = None
        self._done = trio.Event()
        self._done.set()

    # -- primitives a driver implements -------------------------------------------------
    async def select(self, side: str) -> None:
        """Switch the mux to ``host``, ``dut`` or ``off``."""
        raise NotImplementedError

    async def current_side(self) -> str:
        """Read the mux position back from the hardware."""
        raise NotImplementedError

    async def target_path(self) -> str:
        """The block device (or file) holding the card, once it is at the host; waits for
        the medium to appear and raises DriverError when it does not."""
        raise NotImplementedError

    # -- the interface ------------------------------------------------------------------
    @export(mutating=True)
    async def host(self) -> str:
        """Switch the card to the host (to write it)."""
        return await self._switch("host")

    @export(mutating=True)
    async def dut(self) -> str:
        """Switch the card to the DUT (to boot from it)."""
        return await self._switch("dut")

    @export(mutating=True)
    async def off(self) -> str:
        """Disconnect the card from both sides."""
        return await self._switch("off")

    @export
    async def state(self) -> str:
        """Where the card is: host, dut or off."""
        side = await self.current_side()
        self._observed(side)
        return side

    @export(mutating=True)
    async def write(
        self,
        source: str,
        sha256: str | None = None,
        bmap: str | None = "auto",
        verify: bool = False,
        switch: bool = False,
    ) -> dict[str, Any]:
        """Write an image the service fetches itself (http(s)://, fs://, s3://, NAME:path).

        ``bmap``: "auto" (IMAGE.bmap beside it), "none", or the bmap XML itself. Local
        files are written through the ``upload`` stream (what the SDK and CLI do).
        """
        if not is_uri(source, self.config.sources):
            raise BadArguments(
                f"{source!r} is not a URI this service can fetch; upload a local file "
                "with `labctl storage write` (it streams it through the broker)"
            )
        operators = self.config.sources
        shown = redact(source)
        holder: dict[str, Any] = {}

        def open_source() -> Any:
            remote = RemoteSource(source, operators)
            holder["remote"] = remote
            plan.source_size = remote.size
            if bmap == "auto":
                for cand in bmap_candidates(remote.path):
                    if remote.exists(cand):
                        plan.bmap = parse_bmap(remote.read_all(cand))
                        break
            return remote

        plan = WritePlan(source=shown, sha256=sha256, verify=bool(verify))
        if bmap not in (None, "auto", "none"):
            plan.bmap = parse_bmap(bmap)
        try:
            return await self._write(plan, open_source, switch=bool(switch))
        finally:
            if "remote" in holder:
                holder["remote"].close()

    @export
    async def read(self, offset: int = 0, size: int = 4096) -> bytes:
        """Read ``size`` bytes at ``offset`` from the card (at most 8 MiB; use the ``dump``
        stream for more). The card must be at the host."""
        if size > READ_MAX or size < 0 or offset < 0:
            raise BadArguments(f"read takes 0..{READ_MAX} bytes at a non-negative offset")
        path = await self._readable_path()
        return await trio.to_thread.run_sync(_pread_file, path, offset, size)

    @export
    async def info(self) -> dict[str, Any]:
        """Target size, block device, mux side and the last write (source, sha256, bytes,
        time, result)."""
        side = await self.state()
        out: dict[str, Any] = {"state": side, "busy": self._busy, "last_write": self.last_write}
        try:
            path = await self.target_path() if side == "host" else self._known_path()
            out["device"] = path
            out["size"] = await trio.to_thread.run_sync(_size_of, path) if path else None
        except LabError as exc:
            out["device"], out["size"], out["medium"] = None, None, exc.message
        return out

    def _known_path(self) -> str | None:
        """The target's path when it can be known without switching (a mock's file)."""
        return None

    async def reset(self) -> None:
        """A lease ended: stop any write (it is marked failed), then switch off."""
        if self._abort is not None:
            self._abort.set()
        with trio.move_on_after(10):
            await self._done.wait()
        await self._switch("off", force=True)

    # -- streams ------------------------------------------------------------------------
    async def open_stream(self, name: str, end: Any) -> Any:
        if name == "dump":
            return await self._dump(end)
        return await self._upload(end)

    async def _upload(self, end: Any) -> dict[str, Any]:
        """An upload: args name the source, the byte count the client sends (``size``), the
        decompressed size when known, sha256, bmap XML, whether only mapped ranges come."""
        args = end.args
        if not end.writable:
            raise LeaseRequired(f"{self.name}: uploading an image needs the device's lease")
        size = args.get("size")
        if not isinstance(size, int) or size < 0:
            raise BadArguments("upload needs 'size': the number of bytes that will be sent")
        plan = WritePlan(
            source=str(args.get("source") or "upload"),
            sha256=args.get("sha256"),
            verify=bool(args.get("verify")),
            image_size=args.get("image_size"),
            source_size=size,
            ranges_only=bool(args.get("ranges_only")),
        )
        if args.get("bmap"):
            plan.bmap = parse_bmap(args["bmap"])
        if plan.ranges_only and plan.bmap is None:
            raise BadArguments("ranges_only needs a bmap")
        pipe = UploadPipe()
        return await self._write(plan, lambda: pipe, feeder=lambda: pipe.fill(end, size),
                                 pipe=pipe, switch=bool(args.get("switch")))  # fmt: skip

    async def _dump(self, end: Any) -> None:
        size = end.args.get("size")
        if size is not None and (not isinstance(size, int) or size < 0):
            raise BadArguments("dump takes 'size': a non-negative number of bytes, or none")
        path = await self._readable_path()
        total = await trio.to_thread.run_sync(_size_of, path)
        size = total if size is None else min(size, total)
        fd = await trio.to_thread.run_sync(os.open, path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            off = 0
            while off < size:
                data = await trio.to_thread.run_sync(os.pread, fd, min(1 << 20, size - off), off)
                if not data:
                    break
                await end.send(data)
                off += len(data)
        finally:
            os.close(fd)
        await end.close("end of card", result={"bytes": off})

    # -- the write path -----------------------------------------------------------------
    async def _write(
        self,
        plan: WritePlan,
        open_source: Any,
        feeder: Any = None,
        pipe: UploadPipe | None = None,
        switch: bool = False,
    ) -> dict[str, Any]:
        if self._busy is not None:
            raise DriverError(f"{self.name}: busy ({self._busy}); wait for it to finish")
        self._busy = f"write {plan.source}"  # claimed before the first await: one write at a time
        try:
            side = await self.current_side()
        except BaseException:
            self._busy = None
            raise
        if side == "dut" and not switch:
            self._busy = None
            raise WrongSide(
                f"{self.name}: the card is switched to the DUT; writing now would corrupt it "
                f"under the board. Switch it first (`labctl storage host {self.name}`) or "
                "pass --switch (switch=True)"
            )
        self._done = trio.Event()
        abort = self._abort = threading.Event()
        progress = Progress()
        record: dict[str, Any] = {"source": plan.source, "result": "running",
                                  "time": time.time(), "bytes": 0, "sha256": None}  # fmt: skip
        self.last_write = record
        try:
            if side != "host":
                await self._switch("host", force=True)
            path = await self.target_path()
            self._publish_status()
            plan.sync_every = self.config.sync_every
            plan.write_rate = int(getattr(self.config, "write_rate", 0) or 0)
            written = await write_image(
                self.name,
                path,
                plan,
                open_source,
                progress,
                abort,
                ticker=lambda: self._ticker(progress, plan),
                feeder=feeder,
                pipe=pipe,
                fsync_timeout=self.config.fsync_timeout if self.config.fsync else None,
            )
        except BaseException as exc:
            abort.set()
            if pipe is not None:
                pipe.abort(Aborted("write stopped"))
            record["result"] = "failed"
            record["error"] = failure_text(exc)
            record["duration"] = round(time.time() - record["time"], 3)
            self._emit_progress(progress, plan, "failed", error=record["error"])
            self._publish_status()
            raise
        finally:
            self._busy, self._abort = None, None
            self._done.set()
        record.update(
            result="good",
            sha256=written.sha256 or None,
            bytes=written.bytes,
            image_bytes=written.image_bytes,
            source_bytes=written.source_bytes,
            compression=written.compression,
            verified=plan.verify,
            bmap=plan.bmap is not None,
            duration=round(time.time() - record["time"], 3),
        )
        self._emit_progress(progress, plan, "done")
        self._publish_status()
        return dict(record)

    async def _ticker(self, progress: Progress, plan: WritePlan) -> None:
        while True:
            await trio.sleep(PROGRESS_EVERY)
            self._emit_progress(progress, plan, None)

    def _emit_progress(
        self, progress: Progress, plan: WritePlan, phase: str | None, error: str | None = None
    ) -> None:
        body = progress.snapshot()
        body["source"] = plan.source
        if phase is not None:
            body["phase"] = phase
        if error is not None:
            body["error"] = error
        self.ctx.publish("progress", body)

    # -- helpers ------------------------------------------------------------------------
    async def _switch(self, side: str, force: bool = False) -> str:
        if side not in SIDES:
            raise BadArguments(f"side must be one of {', '.join(SIDES)}")
        if self._busy is not None and not force:
            raise DriverError(f"{self.name}: busy ({self._busy}); the card stays where it is")
        await self.select(side)
        self._observed(side)
        return side

    async def _readable_path(self) -> str:
        side = await self.current_side()
        if side != "host":
            raise WrongSide(
                f"{self.name}: the card is at {side}, not the host; reading it needs "
                f"`labctl storage host {self.name}` first"
            )
        return await self.target_path()

    def _observed(self, side: str) -> None:
        if side != self._side:
            self._side = side
            self._publish_status()

    def _publish_status(self) -> None:
        status: dict[str, Any] = {"state": self._side or "unknown"}
        if self.last_write is not None:
            status["last_write"] = self.last_write["result"]
            status["source"] = self.last_write["source"]
        self.ctx.publish_status(status)


def _size_of(path: str) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def _pread_file(path: str, offset: int, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


__all__ = ["StorageDriver", "StorageConfig", "WrongSide", "ByteSize", "parse_size", "Bmap", "mib"]
