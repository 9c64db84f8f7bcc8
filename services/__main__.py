"""``python -m labctl.services CONFIG.yaml``: run one service without loading the CLI.

`labctl lab up` starts services this way: the same runtime as `labctl service run`, but
without click in the process, so an idle service stays small (DESIGN §13).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import trio

from labctl import logs
from labctl.errors import LabError

from .config import load_service_config
from .runtime import ServiceRuntime


def run(config: str, broker: str | None = None) -> None:
    """Run the service in CONFIG until SIGINT/SIGTERM; LabError on a bad config."""
    cfg = load_service_config(Path(config))
    if broker:
        cfg.broker = broker
    logs.setup(f"service:{cfg.service}")
    runtime = ServiceRuntime(cfg, config)

    async def main() -> None:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        return

            nursery.start_soon(stop_on_signal)
            try:
                await runtime.run()
            finally:
                with trio.CancelScope(shield=True):
                    await runtime.aclose()

    try:
        trio.run(main)
    except BaseExceptionGroup as group:
        while isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
            group = group.exceptions[0]  # type: ignore[assignment]
        raise group from None


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        sys.exit("usage: python -m labctl.services CONFIG.yaml")
    try:
        run(sys.argv[1])
    except LabError as err:
        print(f"error: {err.message}", file=sys.stderr)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
