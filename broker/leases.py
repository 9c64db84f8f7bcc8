"""Leases: atomic group allocation, a fair FIFO queue, expiry, keepalives, persistence.

A lease takes every matching device of one group (devices sharing the group label, `dut`
by default; a device without it is a group of one) or nothing. Requests that cannot be
served wait in FIFO order: on each change the queue is walked front to back and each
waiter takes the first free group it matches, so an earlier request always gets first
pick. Granted leases are written to SQLite before the grant is sent, so ``kill -9`` of the
broker loses none. Queued requests are not persisted: waiters are reminded of their position
every heartbeat, so after a broker restart the SDK hears nothing and queues again
(PROTOCOL.md §8).
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
import trio

from labctl import protocol
from labctl.errors import (
    BadRequest,
    DeviceBusy,
    DeviceOffline,
    LeaseNotFound,
    LeaseRequired,
    NoMatch,
    WaitTimeout,
)
from labctl.selector import parse

if TYPE_CHECKING:
    from .registry import Device
    from .server import Broker

log = structlog.get_logger("leases")

MAX_SECONDS = 366 * 86400.0  # durations and waits: anything longer is a typo


def ref_of(lease_id: str) -> str:
    """The public name of a lease: listings, events and the audit journal use it, so seeing
    a lease never gives the id that acts on its devices."""
    return hashlib.sha256(lease_id.encode()).hexdigest()[:12]


@dataclass(slots=True)
class Lease:
    id: str
    holder: str
    selector: str
    devices: list[str]
    begin: float
    end: float
    grace: float
    keepalive_at: float = field(default_factory=time.monotonic)

    @property
    def ref(self) -> str:
        return ref_of(self.id)

    def public(self) -> dict[str, Any]:
        """What anyone may see: everything but the id, which is the holder's credential."""
        row = self.row()
        del row["id"]
        return {"ref": self.ref, **row}

    def row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "holder": self.holder,
            "selector": self.selector,
            "devices": self.devices,
            "begin": self.begin,
            "end": self.end,
            "grace": self.grace,
        }


@dataclass(slots=True)
class Waiter:
    ident: bytes
    rid: Any
    selector: str
    duration: float
    holder: str
    deadline: float
    grace: float
    queued_at: float = field(default_factory=time.time)


class LeaseTable:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.leases: dict[str, Lease] = {}
        self.queue: list[Waiter] = []
        self.remembered_health: dict[str, tuple[str, str]] = {}
        #: devices whose lease ended while they were offline: reset them when they return
        self.owed_reset: set[str] = set()
        self._changed = trio.Event()
        self._poking = False
        self._poke_again = False
        self._queued_count = 0

    # -- persistence --------------------------------------------------------------------
    def load(self) -> None:
        self.owed_reset = self.broker.store.load_owed_resets()
        now = time.monotonic()
        for row in self.broker.store.load_leases():
            lease = Lease(**row, keepalive_at=now)
            self.leases[lease.id] = lease
        if self.leases:
            log.info("leases restored", count=len(self.leases))

    def device_registered(self, dev: Device) -> None:
        """Re-attach restored leases and health to a device as it (re-)registers."""
        for lease in self.leases.values():
            if dev.name in lease.devices:
                dev.lease = lease.id
        if dev.name in self.owed_reset and dev.lease is None:
            self.owed_reset.discard(dev.name)
            self.broker.store.set_owed_reset(dev.name, False)
            if dev.on_release == "reset":
                self._reset(dev)
        if dev.name in self.remembered_health:
            dev.health, dev.health_reason = self.remembered_health[dev.name]

    # -- access checks ------------------------------------------------------------------
    def check_access(self, dev: Device, lease_id: Any, action: str) -> None:
        if lease_id is not None and lease_id not in self.leases:
            raise LeaseNotFound(
                f"lease {lease_id} is not active (released, expired, or its holder went "
                "silent); take a new one",
                {"lease": lease_id},
            )
        group = dev.labels.get(self.broker.settings.group_label)
        selector = f"{self.broker.settings.group_label}={group}" if group else f"name={dev.name}"
        if dev.lease is None:
            if lease_id is not None:
                raise LeaseRequired(
                    f"{action} on {dev.name!r}: your lease {ref_of(lease_id)} does not cover it; "
                    f"lease it too (`labctl lease acquire {selector}`)",
                    {"device": dev.name},
                )
            raise LeaseRequired(
                f"{action} on {dev.name!r} needs a lease; take one with "
                f"`labctl lease acquire {selector}` or use the SDK's lab.lease()",
                {"device": dev.name},
            )
        if dev.lease != lease_id:
            holder = self.leases[dev.lease].holder if dev.lease in self.leases else "?"
            raise DeviceBusy(
                f"{dev.name!r} is leased by {holder}"
                + (
                    "" if lease_id is None else f"; your lease {ref_of(lease_id)} does not cover it"
                ),
                {"device": dev.name, "holder": holder},
            )

    def holder_of(self, dev: Device) -> str | None:
        lease = self.leases.get(dev.lease) if dev.lease else None
        return lease.holder if lease else None

    # -- acquire ------------------------------------------------------------------------
    def acquire(
        self,
        ident: bytes,
        rid: Any,
        selector: str,
        duration: Any = 1800.0,
        wait: Any = 0.0,
        holder: str = "anonymous",
        keepalive: bool = True,
    ) -> dict[str, Any] | None:
        """Grant now (returns the lease), queue (returns None, replies later) or raise."""
        selector = str(selector)
        sel = parse(selector)
        duration = _positive(duration, "duration")
        wait = _positive(wait, "wait", zero_ok=True)
        holder = str(holder or "anonymous")
        # a lease taken for later use (`labctl lease acquire`) lives to its end time with
        # no keepalives; one held by a running program ends soon after that program does
        grace = self.broker.settings.lease_grace if bool(keepalive) else MAX_SECONDS
        matched = self.broker.registry.query(sel)
        if not matched:
            raise NoMatch(f"no device matches selector {selector!r}", {"selector": selector})
        lease = self._try_grant(selector, duration, holder, matched, grace)
        if lease is not None:
            return self._describe(lease)
        if wait <= 0:
            raise self._busy_error(selector, matched)
        waiter = Waiter(ident, rid, selector, duration, holder, time.time() + wait, grace)
        self.queue.append(waiter)
        position = len(self.queue)
        self._progress(waiter, position)
        self._queued_count += 1  # requests have no lease id yet: a broker-wide number
        self.broker.publish(
            f"lease.q{self._queued_count}.queued",
            {"selector": selector, "position": position, "holder": holder},
        )
        self._changed.set()
        return None

    def _groups(self, matched: list[Device]) -> dict[str, list[Device]]:
        key = self.broker.settings.group_label
        groups: dict[str, list[Device]] = {}
        for dev in matched:
            groups.setdefault(dev.labels.get(key) or f"\0{dev.name}", []).append(dev)
        return groups

    def _try_grant(
        self, selector: str, duration: float, holder: str, matched: list[Device], grace: float
    ) -> Lease | None:
        for _, devs in sorted(self._groups(matched).items()):
            if all(d.lease is None and d.online and d.health == "good" for d in devs):
                return self._grant(selector, duration, holder, devs, grace)
        return None

    def _grant(
        self, selector: str, duration: float, holder: str, devs: list[Device], grace: float
    ) -> Lease:
        now = time.time()
        lease = Lease(
            id=secrets.token_urlsafe(12),
            holder=holder,
            selector=selector,
            devices=sorted(d.name for d in devs),
            begin=now,
            end=now + duration,
            grace=grace,
        )
        self.broker.store.save_lease(lease.row())
        self.broker.store.audit(
            holder, "lease.granted", lease.ref, f"{selector} -> {lease.devices}"
        )
        self.leases[lease.id] = lease
        for d in devs:
            d.lease = lease.id
        self.broker.publish(f"lease.{lease.ref}.granted", lease.public())
        self._changed.set()
        return lease

    def _busy_error(self, selector: str, matched: list[Device]) -> Exception:
        reasons = []
        for dev in matched:
            if dev.lease is not None:
                reasons.append(f"{dev.name} leased by {self.holder_of(dev)}")
            elif not dev.online:
                reasons.append(f"{dev.name} offline")
            elif dev.health != "good":
                reasons.append(f"{dev.name} in {dev.health}")
        offline = [d for d in matched if not d.online and d.lease is None]
        if len(offline) == len(matched):  # nothing is busy: everything is down
            why = "; ".join(_named(d.name, d.offline_reason()) for d in offline[:5])
            return DeviceOffline(
                f"{selector!r} matches only offline devices ({why})",
                {"selector": selector, "reasons": reasons},
            )
        return DeviceBusy(
            f"no free group matches {selector!r}: " + "; ".join(reasons[:5]),
            {"selector": selector, "reasons": reasons},
        )

    def _progress(self, w: Waiter, position: int) -> None:
        reply = protocol.Reply(w.rid, {"position": position}, progress=True)
        if not self.broker.send(w.ident, reply.to_frames()):
            w.deadline = 0  # the requester is gone; drop it on the next pass

    def poke(self) -> None:
        """Something changed (release, registration, health): serve the queue.

        Re-entrant calls (ending a lease whose grant could not be delivered pokes again)
        only mark another pass, so the queue is walked by one loop, never recursively.
        """
        if self._poking:
            self._poke_again = True
            return
        self._poking = True
        try:
            while True:
                self._poke_again = False
                for lease_id in self._serve_queue():
                    # granted to a requester that is gone: give it back untouched
                    self.end(lease_id, "holder-lost", reset=False)
                if not self._poke_again:
                    break
        finally:
            self._poking = False

    def _serve_queue(self) -> list[str]:
        """One FIFO pass; returns leases granted to requesters that could not be told."""
        if not self.queue:
            return []
        still: list[Waiter] = []
        undelivered: list[str] = []
        now = time.time()
        for w in self.queue:
            if w.deadline <= now:
                self._expire_waiter(w)
                continue
            matched = self.broker.registry.query(parse(w.selector))
            lease = (
                self._try_grant(w.selector, w.duration, w.holder, matched, w.grace)
                if matched
                else None
            )
            if lease is None:
                still.append(w)
                continue
            reply = protocol.Reply(w.rid, self._describe(lease))
            if not self.broker.send(w.ident, reply.to_frames()):
                undelivered.append(lease.id)
        changed = len(still) != len(self.queue)
        self.queue = still
        if changed:
            for i, w in enumerate(self.queue, 1):
                self._progress(w, i)
        return undelivered

    def _owe_reset(self, name: str) -> None:
        """Remember (durably) to reset a device that cannot be reset now."""
        self.owed_reset.add(name)
        self.broker.store.set_owed_reset(name, True)

    def remind_waiters(self) -> None:
        """Tell every queued requester its position again (each heartbeat), so a client
        that hears nothing knows the broker restarted and lost its request."""
        for i, w in enumerate(self.queue, 1):
            self._progress(w, i)

    def _expire_waiter(self, w: Waiter) -> None:
        if w.deadline == 0:
            return
        waited = time.time() - w.queued_at
        err = WaitTimeout(f"no group matching {w.selector!r} became free within {waited:.1f}s")
        self.broker.send(w.ident, protocol.Error.of(err, w.rid).to_frames())

    # -- keepalive, extend, release -----------------------------------------------------
    def get(self, lease_id: Any) -> Lease:
        lease = self.leases.get(lease_id) if isinstance(lease_id, str) else None
        if lease is None:
            raise LeaseNotFound(f"no active lease {lease_id!r} (released or expired?)")
        return lease

    def keepalive(self, lease_id: Any) -> dict[str, Any]:
        lease = self.get(lease_id)
        lease.keepalive_at = time.monotonic()
        return {"end": lease.end}

    def extend(self, lease_id: Any, duration: Any, who: str) -> dict[str, Any]:
        lease = self.get(lease_id)
        lease.end = max(lease.end, time.time()) + _positive(duration, "duration")  # validated first
        lease.keepalive_at = time.monotonic()
        self.broker.store.save_lease(lease.row())
        self.broker.store.audit(who, "lease.extended", lease.ref, f"end={lease.end:.0f}")
        self._changed.set()
        return self._describe(lease)

    def end(
        self, lease_id: str, reason: str, who: str = "broker", reset: bool = True, why: str = ""
    ) -> None:
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return
        self.broker.store.delete_lease(lease_id)
        self.broker.store.audit(who, "lease.ended", lease.ref, f"{reason} {why}".strip())
        for name in lease.devices:
            dev = self.broker.registry.devices.get(name)
            if dev is None:  # not registered since a broker restart: reset it when it is
                if reset:
                    self._owe_reset(name)
                continue
            if dev.lease != lease_id:
                continue
            dev.lease = None
            if reset and dev.on_release == "reset":
                if dev.service_alive:
                    self._reset(dev)
                else:
                    self._owe_reset(name)
        self.broker.streams.lease_ended(lease_id)
        self.broker.publish(
            f"lease.{lease.ref}.ended", {"reason": reason, "devices": lease.devices, "why": why}
        )
        log.info("lease ended", lease=lease.ref, reason=reason, devices=lease.devices)
        self.poke()

    def _reset(self, dev: Device) -> None:
        reset = protocol.Request.call(dev.name, "__reset__")  # id nil: no reply expected
        self.broker.send(dev.ident, reset.to_frames())

    def set_health(self, name: str, health: str, reason: str, who: str) -> dict[str, Any]:
        if health not in ("good", "maintenance", "bad"):
            raise BadRequest(f"health must be good, maintenance or bad, not {health!r}")
        dev = self.broker.registry.devices.get(name)
        if dev is None:
            from labctl.errors import DeviceNotFound

            raise DeviceNotFound(f"no device named {name!r}")
        dev.health, dev.health_reason = health, reason
        self.remembered_health[name] = (health, reason)
        self.broker.store.set_health(name, health, reason)
        self.broker.store.audit(who, "device.health", name, f"{health} {reason}".strip())
        self.broker.publish(f"device.{name}.health", {"health": health, "reason": reason})
        self.poke()
        return {"name": name, "health": health, "reason": reason}

    # -- time ---------------------------------------------------------------------------
    def tick(self) -> None:
        """End leases past their end time or whose holder went silent; expire waiters."""
        now, mono = time.time(), time.monotonic()
        for lease in list(self.leases.values()):
            if lease.end <= now:
                self.end(lease.id, "expired")
            elif mono - lease.keepalive_at > lease.grace:
                self.end(lease.id, "holder-lost")
        if any(w.deadline <= now for w in self.queue):
            self.poke()

    async def run(self) -> None:
        """Wake at the next deadline (lease end, grace, waiter) or when something changes."""
        while True:
            self.tick()
            now, mono = time.time(), time.monotonic()
            nxt = 5.0
            for lease in self.leases.values():
                nxt = min(nxt, lease.end - now, lease.keepalive_at + lease.grace - mono)
            for w in self.queue:
                nxt = min(nxt, w.deadline - now)
            self._changed = trio.Event()
            with trio.move_on_after(max(nxt, 0.001)):
                await self._changed.wait()

    def describe(self, lease_id: Any) -> dict[str, Any]:
        return self._describe(self.get(lease_id))

    def by_ref(self, ref: Any) -> Lease:
        for lease in self.leases.values():
            if lease.ref == ref:
                return lease
        raise LeaseNotFound(f"no active lease {ref!r} (released or expired?)")

    def ref_of_device(self, dev: Device) -> str | None:
        return ref_of(dev.lease) if dev.lease else None

    def _describe(self, lease: Lease) -> dict[str, Any]:
        """The holder's view: with the id (the holder has it anyway) and the interfaces."""
        devs = self.broker.registry.devices
        return {
            "ref": lease.ref,
            **lease.row(),
            "kinds": {n: devs[n].kind for n in lease.devices if n in devs},
            "interfaces": {n: devs[n].interface for n in lease.devices if n in devs},
        }


def _named(name: str, reason: str) -> str:
    return reason if reason.startswith(name) else f"{name}: {reason}"


def _positive(value: Any, what: str, zero_ok: bool = False) -> float:
    try:
        v = float(value or 0)
    except (TypeError, ValueError):
        raise BadRequest(f"{what} must be a number of seconds, not {value!r}") from None
    if not math.isfinite(v) or v > MAX_SECONDS:
        raise BadRequest(f"{what} must be a finite number of seconds up to a year, not {value!r}")
    if v < 0 or (v == 0 and not zero_ok):
        raise BadRequest(f"{what} must be positive, not {v}")
    return v
