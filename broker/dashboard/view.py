"""The dashboard's picture of the lab, read through the public trio SDK and kept current by
the event stream.

It never touches the broker's tables: devices and leases come from the ``devices`` and
``lease.list`` calls, history from the journal (``events``), and every live event either
updates the picture directly (status, online, health) or marks it stale, and one task
re-reads it (lease and registration changes), at most every ``REFRESH_GAP`` seconds.
Listeners (the WebSocket fan-out) are told about each change; they must not block.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog
import trio

from labctl.aio import AsyncLab

log = structlog.get_logger("dashboard")

#: how far back the journal is read at start (status history, online since, the tail)
HISTORY_S = 24 * 3600
TAIL = 300  # events kept for the live tail
PER_DEVICE = 60  # status changes and events kept per device
REFRESH_GAP = 0.05  # at most 20 re-reads a second, however many events arrive
SAFETY_REFRESH = 15.0  # re-read now and then anyway (a dropped event heals itself)


def to_json(value: Any) -> str:
    return json.dumps(value, default=_jsonable, separators=(",", ":"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return {"hex": raw.hex()[:256]}
    if isinstance(value, (set, tuple)):
        return list(value)
    return repr(value)


def device_of(topic: str) -> str | None:
    """``device.<name>.<what>`` -> name (names may contain dots)."""
    if topic.startswith("device."):
        name = topic[len("device.") :].rpartition(".")[0]
        return name or None
    return None


class LabView:
    def __init__(self, lab: AsyncLab) -> None:
        self.lab = lab
        self.devices: dict[str, dict[str, Any]] = {}
        self.leases: list[dict[str, Any]] = []
        self.queue: list[dict[str, Any]] = []
        self.storage: dict[str, Any] = {}  # the broker's state disk (``hello``): full?
        self.insecure: list[str] = []  # addresses served beyond loopback without keys
        self.tail: deque[dict[str, Any]] = deque(maxlen=TAIL)
        self.status_history: dict[str, deque[dict[str, Any]]] = {}
        self.device_events: dict[str, deque[dict[str, Any]]] = {}
        self.online_since: dict[str, float] = {}
        self.listeners: list[Callable[[str, Any], None]] = []
        self.last_seq = 0
        self.refreshes = 0
        self.changed: set[str] = set()  # devices changed since the last push
        self._stale = trio.Event()

    # -- what the pages and the API read ------------------------------------------------
    def lab_state(self) -> dict[str, Any]:
        return {
            "now": time.time(),
            "devices": list(self.devices.values()),
            "leases": self.leases,
            "queue": self.queue,
            "storage": self.storage,
            "insecure": self.insecure,
        }

    def snapshot_json(self) -> str:
        return to_json({"type": "snapshot", **self.lab_state(), "events": list(self.tail)})

    # -- keeping it current ---------------------------------------------------------------
    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Subscribe, read the journal and the tables, then follow events forever."""
        async with self.lab.event_stream("*") as events:
            await self._load_history()
            await self.refresh()
            task_status.started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._refresher)
                async for ev in events:
                    self.apply(ev)

    async def _load_history(self) -> None:
        rows = await self.lab.history(HISTORY_S, "device.*", limit=5000)
        for ev in rows:
            self._remember(ev)
        rows = await self.lab.history(HISTORY_S, "*", limit=TAIL)
        self.tail.extend(rows)
        if rows:
            self.last_seq = rows[-1]["seq"]

    def _remember(self, ev: dict[str, Any]) -> None:
        """Per-device history: status changes, recent events, when it came online."""
        topic = ev["topic"]
        name = device_of(topic)
        if name is None:
            return
        self.device_events.setdefault(name, deque(maxlen=PER_DEVICE)).append(ev)
        what = topic.rpartition(".")[2]
        if what == "status":
            hist = self.status_history.setdefault(name, deque(maxlen=PER_DEVICE))
            hist.append({"ts": ev["ts"], "status": ev["body"]})
        elif what == "online" and isinstance(ev["body"], dict):
            self.online_since[name] = ev["ts"]

    def apply(self, ev: dict[str, Any]) -> None:
        """One live event: update what it says, mark the rest stale, tell listeners."""
        seq = ev.get("seq") or 0
        if seq and self.last_seq and seq > self.last_seq + 1:
            self.mark_stale()  # events were dropped on the way: re-read the tables
        if seq and seq <= self.last_seq:
            return
        self.last_seq = max(self.last_seq, seq)
        self.tail.append(ev)
        self._remember(ev)
        topic, body = ev["topic"], ev["body"]
        if topic == "broker.storage" and isinstance(body, dict):
            self.storage = body
            self._notify("lab", None)
        name = device_of(topic)
        dev = self.devices.get(name) if name else None
        what = topic.rpartition(".")[2]
        if dev is not None and what == "status":
            dev["status"], dev["status_ts"] = body, ev["ts"]
            self._changed(dev["name"])
        elif dev is not None and what == "health" and isinstance(body, dict):
            dev["health"], dev["health_reason"] = body.get("health"), body.get("reason", "")
            self._changed(dev["name"])
        elif dev is not None and what == "online" and isinstance(body, dict):
            dev["online"] = bool(body.get("online"))
            dev["offline_reason"] = "" if dev["online"] else str(body.get("reason", ""))
            dev["online_since"] = ev["ts"]
            self._changed(dev["name"])
            self.mark_stale()  # a registration may bring new devices or labels
        elif topic.startswith(("lease.", "device.")):
            self.mark_stale()
        self._notify("event", ev)

    def mark_stale(self) -> None:
        self._stale.set()

    async def _refresher(self) -> None:
        while True:
            with trio.move_on_after(SAFETY_REFRESH):
                await self._stale.wait()
            self._stale = trio.Event()
            try:
                await self.refresh()
            except Exception as exc:  # the broker is busy or restarting: try again later
                log.warning("dashboard refresh failed", error=str(exc))
                self.mark_stale()
                await trio.sleep(1.0)
            await trio.sleep(REFRESH_GAP)

    async def refresh(self) -> None:
        devices = await self.lab.devices()
        listing = await self.lab.leases()
        storage = (await self.lab.call("hello")).get("storage") or {}
        if storage != self.storage:
            self.storage = storage
            self._notify("lab", None)
        self.refreshes += 1
        fresh = {}
        for dev in sorted(devices, key=lambda d: d["name"]):
            dev["online_since"] = self.online_since.get(dev["name"])
            fresh[dev["name"]] = dev
        leases = sorted(listing.get("leases", []), key=lambda lease: lease["begin"])
        queue = listing.get("queue", [])
        names = {
            n for n in fresh.keys() | self.devices.keys() if fresh.get(n) != self.devices.get(n)
        }
        if names or (leases, queue) != (self.leases, self.queue):
            self.devices, self.leases, self.queue = fresh, leases, queue
            self._changed(*names)

    def _changed(self, *names: str) -> None:
        self.changed.update(names)
        self._notify("lab", None)

    def take_delta(self) -> dict[str, Any]:
        """What changed since the last call: the devices that changed (``removed``: names
        no longer known), and the leases and queue whole (they are short)."""
        names, self.changed = self.changed, set()
        return {
            "now": time.time(),
            "devices": [self.devices[n] for n in sorted(names) if n in self.devices],
            "removed": sorted(n for n in names if n not in self.devices),
            "leases": self.leases,
            "queue": self.queue,
            "storage": self.storage,
        }

    def _notify(self, what: str, value: Any) -> None:
        for listener in self.listeners:
            listener(what, value)

    # -- one device -----------------------------------------------------------------------
    async def device_detail(self, name: str) -> dict[str, Any]:
        """The summary plus its interface, status history and recent events."""
        info = dict((await self.lab.device(name)).info)
        info["online_since"] = self.online_since.get(name)
        info["status_history"] = list(self.status_history.get(name, ()))
        info["events"] = list(self.device_events.get(name, ()))
        return info
