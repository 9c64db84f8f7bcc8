"""Counters the broker keeps for ``/metrics``: a few integer adds per message, nothing more.

The broker's hot paths only add to ints and dicts here (an RPC costs one ``perf_counter``
and one dict entry while it is in flight). Gauges (devices, leases, the queue) are not kept
here: the dashboard computes them from its own view of the lab when it is scraped, and it
renders everything as Prometheus text (``labctl.broker.dashboard.prometheus``).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import Any

#: RPC latency bucket upper bounds, seconds (the broker hop is ~100 µs; drivers take longer)
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
)  # fmt: skip

#: distinct (method, outcome) counters kept; past it, refusals count as ("other", code)
MAX_METRIC_KEYS = 2000
#: an RPC whose reply never came is forgotten after this many in flight (bounds the dict)
MAX_IN_FLIGHT = 100_000


class Histogram:
    """Cumulative-bucket histogram (Prometheus semantics): counts per upper bound, sum."""

    __slots__ = ("counts", "sum", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        out, total = [], 0
        for bound, n in zip((*LATENCY_BUCKETS, float("inf")), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return out


class BrokerMetrics:
    """What the broker counts as it routes. Every method is O(1) and never raises."""

    def __init__(self) -> None:
        self.started = time.time()
        self.rpcs: dict[tuple[str, str], int] = {}  # (method, outcome) -> count
        self.rpc_latency: dict[str, Histogram] = {}  # method -> histogram
        self._in_flight: dict[int, tuple[str, float]] = {}
        self.leases_acquired = 0
        self.leases_ended: dict[str, int] = {}  # reason -> count
        self.stream_bytes = 0
        self.events_published = 0

    # -- RPC ----------------------------------------------------------------------------
    def rpc_sent(self, rid: int, method: str) -> None:
        """The broker forwarded request ``rid`` to a service."""
        if len(self._in_flight) >= MAX_IN_FLIGHT:
            self._in_flight.clear()
        self._in_flight[rid] = (method, time.perf_counter())

    def rpc_done(self, rid: int, outcome: str) -> None:
        """The reply (``ok``), the error (its code) or the give-up (``timeout``) for ``rid``."""
        started = self._in_flight.pop(rid, None)
        if started is None:
            return
        method, t0 = started
        key = (method, outcome)
        self.rpcs[key] = self.rpcs.get(key, 0) + 1
        hist = self.rpc_latency.get(method)
        if hist is None:
            hist = self.rpc_latency[method] = Histogram()
        hist.observe(time.perf_counter() - t0)

    def rpc_refused(self, method: Any, code: str) -> None:
        """The broker answered a request itself with an error (no such device, no lease...)."""
        key = (method if isinstance(method, str) and len(method) <= 64 else "?", code)
        if key not in self.rpcs and len(self.rpcs) >= MAX_METRIC_KEYS:
            key = ("other", code)  # a peer naming random methods must not grow this dict
        self.rpcs[key] = self.rpcs.get(key, 0) + 1

    # -- events and leases --------------------------------------------------------------
    def published(self, topic: str, body: Any) -> None:
        """An event was published (``body`` given when the broker itself published it: lease
        grants and ends are counted from those)."""
        self.events_published += 1
        if body is not None and topic.startswith("lease."):
            if topic.endswith(".granted"):
                self.leases_acquired += 1
            elif topic.endswith(".ended") and isinstance(body, dict):
                reason = str(body.get("reason", ""))
                self.leases_ended[reason] = self.leases_ended.get(reason, 0) + 1
