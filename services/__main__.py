"""``python -m labctl.services CONFIG.yaml [--broker ADDRESS]``: run one service without the CLI.

`labctl service run` execs this (and `labctl lab up` starts services this way): the same
runtime, without click and the CLI's modules in the process, so an idle service stays
small (DESIGN §13). Pydantic's plugin discovery is off here (it scans every installed
distribution's metadata: ~2 MB resident for no plugin a service uses).
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
    from labctl.errors import LabError

    from .launch import run_service

    try:
        run_service(args[0], broker)
    except LabError as err:
        print(f"error: {err.message}", file=sys.stderr)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
