"""``python -m labctl.services CONFIG.yaml``: run one service without loading the CLI.

`labctl lab up` starts services this way: the same runtime as `labctl service run`, but
without click in the process, so an idle service stays small (DESIGN §13).
"""

from __future__ import annotations

import sys

from labctl.errors import LabError

from .launch import run_service


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        sys.exit("usage: python -m labctl.services CONFIG.yaml")
    try:
        run_service(sys.argv[1])
    except LabError as err:
        print(f"error: {err.message}", file=sys.stderr)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
