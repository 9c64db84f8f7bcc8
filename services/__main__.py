"""``python -m labctl.services CONFIG.yaml [--broker ADDRESS]``: run one service without the CLI.

`labctl service run` execs this: the same runtime, without click and the CLI's modules in the
process, so an idle service stays small (DESIGN §13). Pydantic's plugin discovery is off here
(it scans every installed distribution's metadata: ~2 MB resident for no plugin a service
uses), and what its libraries import but an idle service never uses (ssl, asyncio, hmac,
secrets...: ~8 MiB) is imported on first use (services/lazy_imports.py). `labctl lab up` forks
its services from services/forkserver.py instead, which imports everything up front for its
children to share.
"""

from __future__ import annotations

import os
import sys

USAGE = "usage: python -m labctl.services CONFIG.yaml [--broker ADDRESS]"


def main() -> None:
    args = sys.argv[1:]
    broker = None
    if len(args) == 3 and args[1] == "--broker":
        args, broker = args[:1], args[2]
    if len(args) != 1 or args[0].startswith("-"):
        sys.exit(USAGE)
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    from .lazy_imports import deferred

    with deferred():  # what the libraries import and an idle service never uses
        from labctl import client  # noqa: F401  (the broker address, read at start)
        from labctl.errors import LabError

        from .launch import run_service

    try:
        run_service(args[0], broker)
    except LabError as err:
        print(f"error: {err.message}", file=sys.stderr)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
