"""Running one service process: load and validate its config, run it until a signal."""

from __future__ import annotations

import gc
from pathlib import Path

import trio

from labctl import logs
from labctl.process import run_until_signal

from .config import load_service_config
from .runtime import ServiceRuntime


def run_service(config: str, broker: str | None = None) -> None:
    """Run the service in CONFIG until SIGINT/SIGTERM; ConfigError on a bad config."""
    cfg = load_service_config(Path(config))
    if broker:
        cfg.broker = broker
    logs.setup(f"service:{cfg.service}")
    runtime = ServiceRuntime(cfg, config)

    async def serve() -> None:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(runtime.run)
                release_start_up_memory()
        finally:
            with trio.CancelScope(shield=True):
                await runtime.aclose()

    run_until_signal(serve)


def release_start_up_memory() -> None:
    """Give back what starting up left free: imports, config parsing and pydantic's schema
    building leave garbage and free heap pages behind (about 1 MB resident; DESIGN §13:
    an idle service under 40 MB). Not fork-server work: that is services/forkserver.py."""
    gc.collect()
    try:
        import ctypes  # already imported by trio; glibc only

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to trim
