"""Broker calls: what clients ask the broker itself (queries, leases, health, journal).

Each handler takes the caller's routing id, the request id and keyword arguments and
returns a msgpack-able result, or ``LATER`` when it replies itself (a lease grant once it
is committed, a queued lease, a journal query on the store thread). Who is calling is the
connection's identity (``peers.Peers``), never an argument: the ``holder`` and ``who`` that
older SDKs send are ignored. Whether its role may make the call at all is ``access.POLICY``
(asked in ``dispatch``, by the call's name; a forced release is ``lease.release.force``).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any

from labctl import fields, protocol
from labctl.errors import BadArguments, BadRequest, DeviceNotFound, LabError
from labctl.protocol import Message
from labctl.selector import parse

from . import limits
from .access import Roles
from .events import EventHub
from .leases import LeaseTable
from .outbox import Outbox
from .peers import Peers
from .registry import Registry
from .store_thread import StoreThread

LATER = object()
#: rows an ``events`` or ``audit`` call returns at most (the reply is packed on the loop)
MAX_ROWS = 10_000

#: identity arguments older SDKs send; the connection says who is calling instead
IGNORED = {
    "lease.acquire": "holder",
    "lease.release": "who",
    "lease.extend": "who",
    "health": "who",
}
#: calls whose reply waits until what they changed is committed
DURABLE = frozenset({"lease.release", "lease.extend", "health", "device.remove"})


class BrokerCalls:
    def __init__(
        self,
        registry: Registry,
        leases: LeaseTable,
        outbox: Outbox,
        store: StoreThread,
        peers: Peers,
        roles: Roles,
        hub: Callable[[], EventHub],
        welcome: Callable[[], protocol.Welcome],
    ) -> None:
        self.registry = registry
        self.leases = leases
        self.outbox = outbox
        self.store = store
        self.peers = peers
        self.roles = roles
        self.hub = hub
        self.welcome = welcome
        self.table: dict[str, Any] = {
            "hello": self.hello,
            "devices": self.devices,
            "device": self.device,
            "device.remove": self.device_remove,
            "events": self.events,
            "sync": self.sync,
            "health": self.health,
            "audit": self.audit,
            "lease.acquire": self.lease_acquire,
            "lease.release": self.lease_release,
            "lease.extend": self.lease_extend,
            "lease.keepalive": self.lease_keepalive,
            "lease.list": self.lease_list,
            "lease.show": self.lease_show,
        }
        self._signatures: dict[str, inspect.Signature] = {}

    def dispatch(self, ident: bytes, msg: Message) -> None:
        call = protocol.Call.parse(msg)
        rid, name = call.id, call.method
        fn = self.table.get(name) if isinstance(name, str) else None
        if fn is None:
            raise BadRequest(f"the broker has no call {name!r}; it has {', '.join(self.table)}")
        if self.roles.enforced:
            self.roles.check(ident, name)
        kwargs = call.kwargs()
        if name in IGNORED:
            kwargs.pop(IGNORED[name], None)
        try:  # the keywords fit the call before it runs (a TypeError inside it is a bug)
            sig = self._signatures.get(name)
            if sig is None:
                sig = self._signatures[name] = inspect.signature(fn)
            sig.bind(ident, rid, **kwargs)
        except TypeError as exc:
            raise BadArguments(f"broker call {name}: {exc}") from None
        result = fn(ident, rid, **kwargs)
        if result is LATER:
            return
        frames = protocol.Reply(rid, result).to_frames()
        if name in DURABLE:
            self.store.after_writes(lambda: self._send(ident, frames))
        else:
            self.outbox.send(ident, frames)

    def _send(self, ident: bytes, frames: list[Any]) -> None:
        self.outbox.send(ident, frames)

    def _later(self, ident: bytes, rid: Any) -> Callable[[Any], None]:
        """A ``then`` for a store job: reply with its result, or with the error it raised."""

        def reply(result: Any) -> None:
            if isinstance(result, Exception):
                err = result if isinstance(result, LabError) else LabError(f"store: {result}")
                self.outbox.send(ident, protocol.Error.of(err, rid).to_frames())
            else:
                self.outbox.send(ident, protocol.Reply(rid, result).to_frames())

        return reply

    # -- discovery ----------------------------------------------------------------------
    def hello(self, ident: bytes, rid: Any) -> dict[str, Any]:
        """The WELCOME settings and the broker's storage state (a full disk shows here,
        in ``labctl`` and on the dashboard)."""
        hub = self.hub()
        storage = {**self.store.status(), "unjournaled": hub.unjournaled}
        subscriptions = hub.subscriptions.status()
        return {**self.welcome().as_dict(), "storage": storage, "subscriptions": subscriptions}

    def devices(self, ident: bytes, rid: Any, selector: str = "") -> list[dict[str, Any]]:
        leases = self.leases
        return [
            d.summary(leases.holder_of(d), leases.ref_of_device(d))
            for d in self.registry.query(parse(fields.text(selector, "selector")))
        ]

    def device(self, ident: bytes, rid: Any, name: str) -> dict[str, Any]:
        dev = self.registry.devices.get(fields.text(name, "name"))
        if dev is None:
            raise DeviceNotFound(f"no device named {name!r}", {"device": name})
        out = dev.summary(self.leases.holder_of(dev), self.leases.ref_of_device(dev))
        out["interface"] = dev.interface
        out["on_release"] = dev.on_release
        return out

    def device_remove(self, ident: bytes, rid: Any, name: str) -> dict[str, Any]:
        """Forget a device whose service is gone (stopped, renamed) and that no lease holds;
        journaled with the caller's identity. Its health, kept by name, stays."""
        dev = self.registry.removable(fields.text(name, "name", 200))
        self.leases.writable()
        self.remove(dev.name, self.peers.identity(ident), "by request")
        return {"name": dev.name, "removed": True}

    def forget_offline(self, after: float | None) -> None:
        """Forget devices whose service has been gone longer than ``after`` seconds
        (``--forget-offline-after``; None: never). Waits while the state disk is full."""
        if after is None or self.store.full:
            return
        for dev in self.registry.offline_longer_than(after):
            self.remove(dev.name, "broker", f"offline longer than {after:g}s")

    def remove(self, name: str, who: str, why: str) -> None:
        del self.registry.devices[name]
        self.store.submit(self.store.store.audit, who, "device.removed", name, why, durable=True)
        self.outbox.publish(f"device.{name}.removed", {"who": who, "why": why})

    def events(
        self, ident: bytes, rid: Any, since: float = 3600.0, topic: str = "*", limit: int = 1000
    ) -> object:
        """Journal rows newer than ``since`` seconds ago whose topic matches the glob (on the
        store thread, after the events buffered so far are written)."""
        since_ts = time.time() - fields.seconds(since, "since", zero_ok=True, hi=100 * 366 * 86400)
        topic = fields.text(topic, "topic", 1024)
        limit = fields.integer(limit, "limit", 0, MAX_ROWS)
        self.hub().flush()
        reply = self._later(ident, rid)

        def rows(found: Any) -> None:
            if not isinstance(found, Exception):
                found = [
                    {"seq": seq, "ts": ts, "topic": t, "body": _body(body)}
                    for seq, ts, t, body in found
                ]
            reply(found)

        self.store.submit(self.store.store.events_since, since_ts, topic, limit, then=rows)
        return LATER

    def sync(self, ident: bytes, rid: Any, token: str) -> bool:
        """Publish ``sync.<token>`` (not journaled) so a subscriber knows it is connected.

        The subscriptions that came meanwhile are applied first; ``limit`` if the
        subscription to ``sync.<token>`` was refused (its identity is over its subscription
        limit: the SDK's subscription fails with that instead of waiting for an event that
        would never come)."""
        token = fields.text(token, "token", 200)
        subscriptions = self.hub().subscriptions
        subscriptions.drain()
        refused = subscriptions.refused_token(token)
        if refused is not None:
            raise limits.exceeded("event subscriptions", subscriptions.maximum, refused)
        self.outbox.publish_raw(f"sync.{token}", protocol.pack(None), journal=False)
        return True

    def health(
        self, ident: bytes, rid: Any, name: str, health: str, reason: str = ""
    ) -> dict[str, Any]:
        name, health = fields.text(name, "name", 200), fields.text(health, "health", 20)
        reason = fields.text(reason, "reason")
        return self.leases.set_health(name, health, reason, self.peers.identity(ident))

    def audit(self, ident: bytes, rid: Any, limit: int = 100) -> object:
        limit = fields.integer(limit, "limit", 0, MAX_ROWS)
        self.store.submit(self.store.store.audit_rows, limit, then=self._later(ident, rid))
        return LATER

    # -- leases -------------------------------------------------------------------------
    def lease_acquire(
        self,
        ident: bytes,
        rid: Any,
        selector: Any,
        duration: Any = 1800.0,
        wait: Any = 0.0,
        keepalive: Any = True,
    ) -> object:
        """As LeaseTable.acquire, which validates each argument."""
        who = self.peers.identity(ident)
        self.leases.acquire(ident, rid, who, selector, duration, wait, keepalive)
        return LATER

    def lease_release(
        self,
        ident: bytes,
        rid: Any,
        id: str,
        force: bool = False,
        reason: str = "",
        reset: bool = True,
    ) -> dict[str, Any]:
        """Release by id (the holder); an admin may force it by public ref, with a reason."""
        leases = self.leases
        id, reason = fields.text(id, "id", 200), fields.text(reason, "reason")
        force, reset = fields.flag(force, "force"), fields.flag(reset, "reset")
        if force and self.roles.enforced:
            self.roles.check(ident, "lease.release.force", id if id not in leases.leases else "")
        if force and not reason:
            raise BadRequest("a forced release needs a reason (--reason TEXT)")
        if id in leases.leases:
            lease = leases.get(id)
        elif force:
            lease = leases.by_ref(id)
        else:
            leases.by_ref(id)  # an unknown ref reads "no active lease" like an unknown id
            raise BadRequest(
                f"{id} is a lease's public ref; its holder releases it by id, "
                "or force it with --force --reason TEXT"
            )
        leases.writable()
        who = self.peers.identity(ident)
        leases.end(lease.id, "forced" if force else "released", who=who, reset=reset, why=reason)
        return {"ref": lease.ref, "released": True}

    def lease_extend(self, ident: bytes, rid: Any, id: str, duration: float) -> dict[str, Any]:
        return self.leases.extend(fields.text(id, "id", 200), duration, self.peers.identity(ident))

    def lease_keepalive(self, ident: bytes, rid: Any, ids: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for lease_id in fields.text_list(ids, "ids"):
            try:
                out[lease_id] = self.leases.keepalive(lease_id)
            except Exception as exc:
                out[lease_id] = {"error": str(exc)}
        return out

    def lease_list(self, ident: bytes, rid: Any) -> dict[str, Any]:
        leases = self.leases
        return {
            "leases": [lease.public() for lease in leases.leases.values()],
            "queue": leases.queue.listing(),
        }

    def lease_show(self, ident: bytes, rid: Any, id: str) -> dict[str, Any]:
        """By id: the holder's view; by public ref: what anyone may see."""
        id = fields.text(id, "id", 200)
        if id in self.leases.leases:
            return self.leases.describe(id)
        return self.leases.by_ref(id).public()


def _body(raw: bytes) -> Any:
    """A journaled body, or a marker for one that does not decode (an older broker kept it)."""
    try:
        return protocol.unpack(raw)
    except Exception:
        return {"undecodable": raw.hex()[:64]}
