"""Running one service process: load and validate its config, run it until a signal."""

from __future__ import annotations

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
            await runtime.run()
        finally:
            with trio.CancelScope(shield=True):
                await runtime.aclose()

    run_until_signal(serve)
