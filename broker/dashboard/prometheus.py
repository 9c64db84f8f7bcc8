"""``/metrics`` in the Prometheus text exposition format (version 0.0.4).

Counters come from the broker's ``BrokerMetrics``; gauges from the dashboard's view of the
lab (devices, leases, the queue) and from ``/proc`` (the broker's RSS: it is this process).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import Any

from labctl.broker.metrics import BrokerMetrics

from .fanout import Fanout
from .view import LabView

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: Any) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


class _Text:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help: str) -> None:
        self.lines += [f"# HELP {name} {help}", f"# TYPE {name} {kind}"]

    def sample(self, name: str, value: float, **labels: Any) -> None:
        self.lines.append(f"{name}{_labels(**labels)} {value!r}")


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def render(view: LabView, metrics: BrokerMetrics, fanout: Fanout | None = None) -> str:
    t = _Text()
    now = time.time()

    t.family("labctl_devices", "gauge", "Devices known to the broker by kind, online and health.")
    by = Counter(
        (d["kind"], "true" if d["online"] else "false", d["health"]) for d in view.devices.values()
    )
    for (kind, online, health), n in sorted(by.items()):
        t.sample("labctl_devices", n, kind=kind, online=online, health=health)

    t.family("labctl_leases_active", "gauge", "Leases currently held.")
    t.sample("labctl_leases_active", len(view.leases))
    t.family("labctl_lease_queue_length", "gauge", "Lease requests waiting for a free group.")
    t.sample("labctl_lease_queue_length", len(view.queue))
    oldest = min((w["since"] for w in view.queue), default=None)
    t.family("labctl_lease_queue_oldest_wait_seconds", "gauge", "How long the oldest waiter waits.")
    t.sample("labctl_lease_queue_oldest_wait_seconds", 0.0 if oldest is None else now - oldest)

    t.family(
        "labctl_lease_acquisitions_total", "counter", "Leases granted since the broker started."
    )
    t.sample("labctl_lease_acquisitions_total", metrics.leases_acquired)
    t.family("labctl_lease_releases_total", "counter", "Leases ended, by reason.")
    for reason, n in sorted(metrics.leases_ended.items()):
        t.sample("labctl_lease_releases_total", n, reason=reason)

    t.family("labctl_rpc_total", "counter", "Device RPCs by method and outcome (ok or error code).")
    for (method, outcome), n in sorted(metrics.rpcs.items()):
        t.sample("labctl_rpc_total", n, method=method, outcome=outcome)
    t.family("labctl_rpc_duration_seconds", "histogram", "Device RPC latency through the broker.")
    for method, hist in sorted(metrics.rpc_latency.items()):
        for bound, n in hist.cumulative():
            t.sample("labctl_rpc_duration_seconds_bucket", n, method=method, le=bound)
        t.sample("labctl_rpc_duration_seconds_sum", float(hist.sum), method=method)
        t.sample("labctl_rpc_duration_seconds_count", hist.count, method=method)

    t.family("labctl_stream_bytes_total", "counter", "Stream payload bytes routed.")
    t.sample("labctl_stream_bytes_total", metrics.stream_bytes)
    t.family("labctl_events_published_total", "counter", "Events published.")
    t.sample("labctl_events_published_total", metrics.events_published)

    t.family("labctl_broker_resident_memory_bytes", "gauge", "Broker process RSS.")
    t.sample("labctl_broker_resident_memory_bytes", rss_bytes())
    t.family("labctl_broker_start_time_seconds", "gauge", "When the broker started (epoch).")
    t.sample("labctl_broker_start_time_seconds", float(metrics.started))
    if fanout is not None:
        t.family("labctl_dashboard_clients", "gauge", "Open dashboard WebSockets.")
        t.sample("labctl_dashboard_clients", len(fanout.clients))
        t.family("labctl_dashboard_resyncs_total", "counter", "Slow pages resent a snapshot.")
        t.sample(
            "labctl_dashboard_resyncs_total",
            fanout.resyncs + sum(q.resyncs for q in fanout.clients),
        )
    return "\n".join(t.lines) + "\n"
