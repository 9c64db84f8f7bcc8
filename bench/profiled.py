"""Run a module under cProfile that signals switch on and off, to count calls per RPC.

    python bench/profiled.py STATS_FILE -m MODULE [ARGS...]

SIGUSR1 starts profiling the main thread (where trio runs) afresh, SIGUSR2 stops it and
writes the stats to STATS_FILE; start-up and shutdown are not counted. The benchmark sends
the signals around a batch of calls and divides the call count by the batch size (after
subtracting what an idle window of its own shows the process doing on its own: timers).
"""

from __future__ import annotations

import cProfile
import runpy
import signal
import sys


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[2] != "-m":
        sys.exit(__doc__)
    out, module = sys.argv[1], sys.argv[3]
    profiler = cProfile.Profile()

    def start(*_: object) -> None:
        nonlocal profiler
        profiler = cProfile.Profile()  # each window counted on its own
        profiler.enable()

    def stop(*_: object) -> None:
        profiler.disable()
        profiler.dump_stats(out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    sys.argv = [module, *sys.argv[4:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
