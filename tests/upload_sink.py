"""A service whose one device takes uploads: run as ``python tests/upload_sink.py CONFIG``.

The driver stands in for storage (not a kind yet) to test the writer's end of data and the
service's verdict: its ``upload`` stream hashes what it receives and closes with the digest,
or fails with a typed error when the client asked for that (``args.fail``).
"""

from __future__ import annotations

import hashlib
import sys
from typing import Any

import trio

from labctl.errors import BadArguments
from labctl.services import runtime
from labctl.services.driver import Driver, DriverConfig
from labctl.services.launch import run_service
from labctl.services.stream import StreamEnd


class UploadSink(Driver):
    kind = "sink"
    Config = DriverConfig
    streams = {"upload": {"writable": True}}

    async def open_stream(self, name: str, end: StreamEnd) -> Any:
        digest, size = hashlib.sha256(), 0
        while True:
            try:
                data = await end.receive()
            except trio.EndOfChannel:
                break
            digest.update(data)
            size += len(data)
        if end.args.get("fail"):
            await end.fail(BadArguments("image rejected", {"size": size}))
            return None
        if end.args.get("by_return"):
            return {"size": size, "sha256": digest.hexdigest(), "how": "returned"}
        await end.close(result={"size": size, "sha256": digest.hexdigest()})
        return None


if __name__ == "__main__":
    runtime.load_driver = lambda kind, driver: UploadSink  # type: ignore[assignment]
    run_service(sys.argv[1])
