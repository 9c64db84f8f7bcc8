"""Leases: atomic group allocation, expiry, keepalives, ends, and their persistence.

A lease takes every matching device of one group (devices sharing the group label, `dut`
by default; a device without it is a group of one) or nothing. Requests that cannot be
served wait in ``waitqueue.WaitQueue``; who may use a leased device is ``access.LeaseAccess``;
resets after an end are ``resets.Resets``. Granted leases are committed to SQLite (on the
store thread) before the grant is sent, so ``kill -9`` of the broker loses none.

The table gets what it needs injected: the registry, an outbox to send and publish, the
store thread, and a callback for streams to revoke when a lease ends.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import structlog
import trio

from labctl import fields, protocol
from labctl.errors import DeviceBusy, DeviceOffline, LeaseNotFound, NoMatch, StorageFull
from labctl.selector import parse

from . import limits
from .access import LeaseAccess, ref_of
from .lease import Lease
from .outbox import Outbox
from .registry import Device, Registry
from .resets import Resets
from .store_thread import StoreThread
from .waitqueue import Waiter, WaitQueue

log = structlog.get_logger("leases")

MAX_SECONDS = fields.MAX_SECONDS  # durations and waits: anything longer is a typo

__all__ = ["Lease", "LeaseTable", "ref_of"]


class LeaseTable:
    def __init__(
        self,
        registry: Registry,
        outbox: Outbox,
        store: StoreThread,
        group_label: str,
        lease_grace: float,
        revoke_streams: Callable[[str], None],
    ) -> None:
        self.registry = registry
        self.outbox = outbox
        self.store = store
        self.db = store.store  # its methods run on the store thread, through ``store``
        self.group_label = group_label
        self.lease_grace = lease_grace
        self.revoke_streams = revoke_streams
        self.leases: dict[str, Lease] = {}
        self.queue = WaitQueue(outbox)
        self.access = LeaseAccess(self.leases, group_label, journal=self.forced)
        self.resets = Resets(outbox, self.reset_failed, self.poke)
        #: devices whose lease ended while they were offline: reset them when they return
        self.owed_reset: set[str] = set()
        self._changed = trio.Event()
        self._failed: set[str] = set()  # grants whose commit failed (the disk is full)
        self._poking = False
        self._poke_again = False

    # -- persistence --------------------------------------------------------------------
    def load(self) -> None:
        """Read leases, owed resets and health (at start, before the store thread runs)."""
        self.owed_reset = self.db.load_owed_resets()
        self.registry.health.update(self.db.load_health())
        now = time.monotonic()
        for row in self.db.load_leases():
            lease = Lease(**row, keepalive_at=now)
            self.leases[lease.id] = lease
        if self.leases:
            log.info("leases restored", count=len(self.leases))

    def writable(self) -> None:
        """Refuse a lease change while the state disk takes no writes (the change could
        not be recorded with its audit row); leases held stay valid meanwhile."""
        if self.store.full:
            raise StorageFull(
                f"the broker's state disk ({self.db.dir}) is full: lease and health changes "
                "are refused until it has space again; leases held stay valid",
                {"dir": str(self.db.dir)},
            )

    def device_registered(self, dev: Device) -> None:
        """Re-attach restored leases to a device as it (re-)registers; send an owed reset."""
        for lease in self.leases.values():
            if dev.name in lease.devices:
                dev.lease = lease.id
        if dev.name in self.owed_reset and dev.lease is None:
            self.owed_reset.discard(dev.name)
            self.store.submit(self.db.set_owed_reset, dev.name, False, durable=True)
            if dev.on_release == "reset":
                self.resets.send(dev)

    def holder_of(self, dev: Device) -> str | None:
        lease = self.leases.get(dev.lease) if dev.lease else None
        return lease.holder if lease else None

    # -- acquire ------------------------------------------------------------------------
    def acquire(
        self,
        ident: bytes,
        rid: Any,
        holder: str,
        selector: str,
        duration: Any = 1800.0,
        wait: Any = 0.0,
        keepalive: bool = True,
    ) -> None:
        """Grant now, or queue; the reply goes out once the grant is committed (or later,
        from the queue). Raises what is wrong with the request. ``holder`` is the
        connection's identity (``peers.Peers``)."""
        selector = fields.text(selector, "selector")
        sel = parse(selector)
        duration = _positive(duration, "duration")
        wait = _positive(wait, "wait", zero_ok=True)
        # a lease taken for later use (`labctl lease acquire`) lives to its end time with
        # no keepalives; one held by a running program ends soon after that program does
        grace = self.lease_grace if fields.flag(keepalive, "keepalive") else MAX_SECONDS
        self.writable()
        matched = self.registry.query(sel)
        if not matched:
            raise NoMatch(f"no device matches selector {selector!r}", {"selector": selector})
        lease = self._try_grant(selector, duration, holder, matched, grace)
        if lease is not None:
            self._tell_holder(ident, rid, lease)
            return
        settling = wait <= 0
        if settling:
            # A group kept only by resets still unanswered (a lease just ended) is about to be
            # free: wait for those answers rather than fail a request made right after a release.
            wait = self._reset_wait(matched)
            if wait <= 0:
                raise self._busy_error(selector, matched)
        queued = sum(1 for w in self.queue.waiters if w.holder == holder)  # per identity
        limits.check(queued, limits.MAX_WAITERS, "queued lease requests", holder)
        self.queue.add(Waiter(ident, rid, selector, duration, holder, time.time() + wait, grace,
                              settling=settling))  # fmt: skip
        self._changed.set()

    def _groups(self, matched: list[Device]) -> dict[str, list[Device]]:
        key = self.group_label
        groups: dict[str, list[Device]] = {}
        for dev in matched:
            groups.setdefault(dev.labels.get(key) or f"\0{dev.name}", []).append(dev)
        return groups

    def _try_grant(
        self, selector: str, duration: float, holder: str, matched: list[Device], grace: float
    ) -> Lease | None:
        for _, devs in sorted(self._groups(matched).items()):
            if all(self._allocatable(d) for d in devs):
                return self._grant(selector, duration, holder, devs, grace)
        return None

    def _reset_wait(self, matched: list[Device]) -> float:
        """Seconds until some group of ``matched`` is free once its pending resets are
        answered (0: no group is kept only by resets)."""
        waits = []
        for devs in self._groups(matched).values():
            resetting = [d for d in devs if self.resets.resetting(d.name)]
            others = [d for d in devs if d not in resetting]
            if (
                resetting
                and all(self._allocatable(d) for d in others)
                and all(d.lease is None and d.online and d.health == "good" for d in resetting)
            ):
                waits.append(max(self.resets.seconds_left(d.name) for d in resetting))
        return min(waits, default=0.0)

    def _allocatable(self, dev: Device) -> bool:
        return (
            dev.lease is None
            and dev.online
            and dev.health == "good"
            and not self.resets.resetting(dev.name)
        )

    def _grant(
        self, selector: str, duration: float, holder: str, devs: list[Device], grace: float
    ) -> Lease:
        now = time.time()
        lease = Lease(
            id=new_lease_id(),
            holder=holder,
            selector=selector,
            devices=sorted(d.name for d in devs),
            begin=now,
            end=now + duration,
            grace=grace,
        )
        audit = (holder, "lease.granted", lease.ref, f"{selector} -> {lease.devices}")
        self.store.submit(
            self.db.grant, lease.row(), audit, then=lambda r: self._committed(lease, r)
        )
        self.leases[lease.id] = lease
        for d in devs:
            d.lease = lease.id
        self.outbox.publish(f"lease.{lease.ref}.granted", lease.public())
        self._changed.set()
        return lease

    def _committed(self, lease: Lease, result: Any) -> None:
        """A grant's commit failed (the disk is full): undo it whole; its holder hears
        ``storage-full`` (``_tell_holder``), nobody else ever held it."""
        if not isinstance(result, Exception) or self.leases.pop(lease.id, None) is None:
            return
        self._failed.add(lease.id)
        for name in lease.devices:
            dev = self.registry.devices.get(name)
            if dev is not None and dev.lease == lease.id:
                dev.lease = None
        self.outbox.publish(
            f"lease.{lease.ref}.ended",
            {"reason": "storage-full", "devices": lease.devices, "why": "not recorded"},
        )

    def _tell_holder(self, ident: bytes, rid: Any, lease: Lease) -> None:
        """Reply with the lease once it is committed; a holder that is gone by then loses it
        (no reset: nobody used the devices)."""

        def tell() -> None:
            if lease.id in self._failed:
                self._failed.discard(lease.id)
                err = StorageFull(
                    f"the broker could not record the lease: {self.store.full_reason}"
                )
                self.outbox.send(ident, protocol.Error.of(err, rid).to_frames())
                return
            if lease.id not in self.leases:
                return  # ended meanwhile (expired, forced)
            if not self.outbox.send(ident, protocol.Reply(rid, self._describe(lease)).to_frames()):
                self.end(lease.id, "holder-lost", reset=False)

        self.store.after_writes(tell)

    def _busy_error(self, selector: str, matched: list[Device]) -> Exception:
        reasons = []
        for dev in matched:
            if dev.lease is not None:
                reasons.append(f"{dev.name} leased by {self.holder_of(dev)}")
            elif not dev.online:
                reasons.append(f"{dev.name} offline")
            elif dev.health != "good":
                reasons.append(f"{dev.name} in {dev.health}")
            elif self.resets.resetting(dev.name):
                reasons.append(f"{dev.name} being reset")
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

    def poke(self) -> None:
        """Something changed (release, registration, health): serve the queue.

        Re-entrant calls only mark another pass, so the queue is walked by one loop, never
        recursively.
        """
        if self._poking:
            self._poke_again = True
            return
        self._poking = True
        try:
            while True:
                self._poke_again = False
                for waiter, lease in self.queue.serve(self._grant_to):
                    self._tell_holder(waiter.ident, waiter.rid, lease)
                if not self._poke_again:
                    break
        finally:
            self._poking = False

    def _grant_to(self, w: Waiter) -> Lease | None:
        if self.store.full:
            return None  # waiters keep waiting until a grant can be recorded
        matched = self.registry.query(parse(w.selector))
        if not matched:
            return None
        lease = self._try_grant(w.selector, w.duration, w.holder, matched, w.grace)
        if lease is None and w.settling and self._reset_wait(matched) <= 0:
            raise self._busy_error(w.selector, matched)  # the reset settled, and not our way
        return lease

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
        seconds = _positive(duration, "duration")  # every argument validated first
        lease = self.get(lease_id)
        self.writable()
        lease.end = max(lease.end, time.time()) + seconds
        lease.keepalive_at = time.monotonic()
        audit = (who, "lease.extended", lease.ref, f"end={lease.end:.0f}")
        self.store.submit(self.db.extend, lease.row(), audit, durable=True)
        self._changed.set()
        return self._describe(lease)

    def end(
        self, lease_id: str, reason: str, who: str = "broker", reset: bool = True, why: str = ""
    ) -> None:
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return
        owed: list[str] = []  # devices that cannot be reset now: reset them when they return
        for name in lease.devices:
            dev = self.registry.devices.get(name)
            if dev is None:  # not registered since a broker restart: reset it when it is
                if reset:
                    owed.append(name)
                continue
            if dev.lease != lease_id:
                continue
            dev.lease = None
            if reset and dev.on_release == "reset":
                if dev.service_alive:
                    self.resets.send(dev)
                else:
                    owed.append(name)
        self.owed_reset.update(owed)
        audit = (who, "lease.ended", lease.ref, f"{reason} {why}".strip())
        self.store.submit(self.db.end_lease, lease_id, audit, owed, durable=True)
        self.revoke_streams(lease_id)
        self.outbox.publish(
            f"lease.{lease.ref}.ended", {"reason": reason, "devices": lease.devices, "why": why}
        )
        log.info("lease ended", lease=lease.ref, reason=reason, devices=lease.devices)
        self.poke()

    # -- health -------------------------------------------------------------------------
    def set_health(
        self, name: str, health: str, reason: str, who: str, admin: bool = True
    ) -> dict[str, Any]:
        """Set, persist (one transaction with its audit row), journal and publish a device's
        health, then serve the queue. An admin's change is refused while the disk is full;
        the broker's own (a failed reset) is kept and written when space returns."""
        if admin:
            self.writable()
        self.registry.set_health(name, health, reason)  # validates before it changes
        audit = (who, "device.health", name, f"{health} {reason}".strip())
        self.store.submit(self.db.health_change, name, health, reason, audit, durable=True)
        self.outbox.publish(f"device.{name}.health", {"health": health, "reason": reason})
        self.poke()
        return {"name": name, "health": health, "reason": reason}

    def forced(self, dev: Device, who: str, action: str, reason: str) -> None:
        """Journal a forced use of a device in maintenance: the audit row (who, what, why)
        and a ``device.<name>.forced`` event."""
        audit = (who, "device.forced", dev.name, f"{action}: {reason}")
        self.store.submit(self.db.audit, *audit, durable=True)
        self.outbox.publish(f"device.{dev.name}.forced", {"who": who, "action": action,
                                                          "reason": reason})  # fmt: skip
        log.warning("device in maintenance used by force", device=dev.name, who=who,
                    action=action, reason=reason)  # fmt: skip

    def reset_failed(self, name: str, reason: str) -> None:
        """A device's reset failed: out of allocation until an admin sets it good again."""
        if name in self.registry.devices:
            self.set_health(name, "bad", reason, "broker", admin=False)

    # -- time ---------------------------------------------------------------------------
    def tick(self) -> None:
        """End leases past their end time or whose holder went silent; expire waiters."""
        now, mono = time.time(), time.monotonic()
        for lease in list(self.leases.values()):
            if lease.end <= now:
                self.end(lease.id, "expired")
            elif mono - lease.keepalive_at > lease.grace:
                self.end(lease.id, "holder-lost")
        if self.queue.expired(now):
            self.poke()
        self.resets.forget_expired(mono)

    async def run(self) -> None:
        """Wake at the next deadline (lease end, grace, waiter) or when something changes."""
        while True:
            self.tick()
            now, mono = time.time(), time.monotonic()
            nxt = min(5.0, self.queue.next_deadline() - now)
            for lease in self.leases.values():
                nxt = min(nxt, lease.end - now, lease.keepalive_at + lease.grace - mono)
            self._changed = trio.Event()
            with trio.move_on_after(max(nxt, 0.001)):
                await self._changed.wait()

    # -- views --------------------------------------------------------------------------
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
        devs = self.registry.devices
        return {
            "ref": lease.ref,
            **lease.row(),
            "kinds": {n: devs[n].kind for n in lease.devices if n in devs},
            "interfaces": {n: devs[n].interface for n in lease.devices if n in devs},
        }


def new_lease_id() -> str:
    """16 URL-safe characters (96 random bits) that never start with ``-`` or ``_``: a
    command line takes an id starting with ``-`` for an option (``lease show -ZJv…``)."""
    while True:
        lease_id = secrets.token_urlsafe(12)
        if lease_id[0].isalnum():
            return lease_id


def _named(name: str, reason: str) -> str:
    return reason if reason.startswith(name) else f"{name}: {reason}"


def _positive(value: Any, what: str, zero_ok: bool = False) -> float:
    """Seconds (nil reads as 0); BadRequest naming the field otherwise."""
    return fields.seconds(0 if value is None else value, what, zero_ok)
