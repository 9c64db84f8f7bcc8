"""Broker calls: what clients ask the broker itself (queries, leases, health, journal).

Each handler takes the caller's routing id, the request id and keyword arguments and
returns a msgpack-able result, or ``None`` when the reply comes later (a queued lease).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from labctl import protocol
from labctl.errors import BadArguments, BadRequest, DeviceNotFound
from labctl.protocol import Message
from labctl.selector import parse

if TYPE_CHECKING:
    from .server import Broker


class BrokerCalls:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.table: dict[str, Any] = {
            "hello": self.hello,
            "devices": self.devices,
            "device": self.device,
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

    def dispatch(self, ident: bytes, msg: Message) -> None:
        call = protocol.Call.parse(msg)
        rid, name = call.id, call.method
        fn = self.table.get(name) if isinstance(name, str) else None
        if fn is None:
            raise BadRequest(f"the broker has no call {name!r}; it has {', '.join(self.table)}")
        kwargs = call.kwargs()
        try:
            result = fn(ident, rid, **kwargs)
        except TypeError as exc:
            raise BadArguments(f"broker call {name}: {exc}") from None
        if result is not _LATER:
            self.broker.send(ident, protocol.Reply(rid, result).to_frames())

    # -- discovery ----------------------------------------------------------------------
    def hello(self, ident: bytes, rid: Any) -> dict[str, Any]:
        return self.broker.welcome().as_dict()

    def devices(self, ident: bytes, rid: Any, selector: str = "") -> list[dict[str, Any]]:
        leases = self.broker.leases
        return [
            d.summary(leases.holder_of(d), leases.ref_of_device(d))
            for d in self.broker.registry.query(parse(selector))
        ]

    def device(self, ident: bytes, rid: Any, name: str) -> dict[str, Any]:
        dev = self.broker.registry.devices.get(name)
        if dev is None:
            raise DeviceNotFound(f"no device named {name!r}", {"device": name})
        leases = self.broker.leases
        out = dev.summary(leases.holder_of(dev), leases.ref_of_device(dev))
        out["interface"] = dev.interface
        out["on_release"] = dev.on_release
        return out

    def events(
        self, ident: bytes, rid: Any, since: float = 3600.0, topic: str = "*", limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Journal rows newer than ``since`` seconds ago whose topic matches the glob."""
        rows = self.broker.store.events_since(time.time() - float(since), str(topic), int(limit))
        return [
            {"seq": seq, "ts": ts, "topic": t, "body": _body(body)} for seq, ts, t, body in rows
        ]

    def sync(self, ident: bytes, rid: Any, token: str) -> bool:
        """Publish ``sync.<token>`` (not journaled) so a subscriber knows it is connected."""
        self.broker.events_hub.publish_raw(f"sync.{token}", protocol.pack(None), journal=False)
        return True

    def health(
        self, ident: bytes, rid: Any, name: str, health: str, reason: str = "", who: str = "?"
    ) -> dict[str, Any]:
        return self.broker.leases.set_health(name, health, reason, who)

    def audit(self, ident: bytes, rid: Any, limit: int = 100) -> list[dict[str, Any]]:
        return self.broker.store.audit_rows(int(limit))

    # -- leases -------------------------------------------------------------------------
    def lease_acquire(self, ident: bytes, rid: Any, **args: Any) -> Any:
        """Arguments as LeaseTable.acquire; an unknown one is bad-arguments (TypeError)."""
        result = self.broker.leases.acquire(ident, rid, **args)
        return _LATER if result is None else result

    def lease_release(
        self,
        ident: bytes,
        rid: Any,
        id: str,
        force: bool = False,
        reason: str = "",
        reset: bool = True,
        who: str = "?",
    ) -> dict[str, Any]:
        """Release by id (the holder); an admin may force it by public ref, with a reason."""
        leases = self.broker.leases
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
        leases.end(lease.id, "forced" if force else "released", who=who, reset=reset, why=reason)
        return {"ref": lease.ref, "released": True}

    def lease_extend(
        self, ident: bytes, rid: Any, id: str, duration: float, who: str = "?"
    ) -> dict[str, Any]:
        return self.broker.leases.extend(id, duration, who)

    def lease_keepalive(self, ident: bytes, rid: Any, ids: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for lease_id in ids:
            try:
                out[lease_id] = self.broker.leases.keepalive(lease_id)
            except Exception as exc:
                out[lease_id] = {"error": str(exc)}
        return out

    def lease_list(self, ident: bytes, rid: Any) -> dict[str, Any]:
        leases = self.broker.leases
        queued = [
            {"position": i, "selector": w.selector, "holder": w.holder, "since": w.queued_at}
            for i, w in enumerate(leases.queue, 1)
        ]
        return {"leases": [lease.public() for lease in leases.leases.values()], "queue": queued}

    def lease_show(self, ident: bytes, rid: Any, id: str) -> dict[str, Any]:
        """By id: the holder's view; by public ref: what anyone may see."""
        leases = self.broker.leases
        if id in leases.leases:
            return leases.describe(id)
        return leases.by_ref(id).public()


_LATER = object()


def _body(raw: bytes) -> Any:
    """A journaled body, or a marker for one that does not decode (an older broker kept it)."""
    try:
        return protocol.unpack(raw)
    except Exception:
        return {"undecodable": raw.hex()[:64]}
