"""Shared bits of the benchmarks: a throwaway lab in a temp dir, and percentiles."""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import LabHarness  # noqa: E402


def percentiles(samples_s: list[float]) -> dict[str, float]:
    xs = sorted(samples_s)
    return {
        "p50_us": xs[len(xs) // 2] * 1e6,
        "p99_us": xs[int(len(xs) * 0.99)] * 1e6,
        "mean_us": statistics.fmean(xs) * 1e6,
    }


def new_lab(transport: str = "ipc", heartbeat: float = 1.0) -> LabHarness:
    root = Path(tempfile.mkdtemp(prefix="lcb-", dir="/tmp"))
    return LabHarness(root, transport=transport, heartbeat=heartbeat, grace="60s")
