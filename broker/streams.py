"""Stream routing: byte streams between a client and a service, forwarded by stream id.

The broker assigns a stream id (sid) that both ends use, so data frames pass through
with their header bytes untouched. It enforces credit: each side may send only as many
payload bytes as the other side granted, so a stalled reader stalls only its own
stream and no stream can make the broker buffer without bound. A sender that overruns
its credit is cut off. Payload frames arrive as ``zmq.Frame`` (``bus.BusSocket``) and are
forwarded as the same frames: stream bytes are never copied in Python.

The router gets what it needs injected: the registry, the lease access policy, an outbox
to send with, and the metrics it counts bytes in.

Write access lasts as long as the rule that allowed it: a route under a lease is closed
when the lease ends (``lease_ended``); when a device's health changes (``health_changed``,
told by the registry), a writer forced onto it in maintenance is closed once maintenance
ends, and any other writer once it begins. Read-only routes need no rule and stay.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from labctl import protocol
from labctl.errors import ProtocolError, StreamClosed, StreamRefused
from labctl.protocol import Message

from . import limits
from .access import LeaseAccess, Roles
from .metrics import BrokerMetrics
from .outbox import Outbox
from .registry import Device, Registry

log = structlog.get_logger("streams")


def _broker_close(sid: object, reason: str, unknown: bool = False) -> list[object]:
    """A close the broker itself decides: typed ``stream-closed``, so a writer waiting for
    a service's verdict can tell it from one."""
    return protocol.StreamClose(sid, reason, unknown, StreamClosed(reason)).to_frames()


@dataclass(slots=True)
class Route:
    sid: int
    client: bytes
    service: bytes
    device: str
    name: str
    lease: str | None
    writable: bool
    forced: bool = False  # a writer let in by ``force`` on a device in maintenance (§8)
    who: str = ""  # the client's identity (limits.MAX_STREAMS counts per identity)
    to_client_credit: int = 0  # bytes the client granted the service
    to_service_credit: int = 0  # bytes the service granted the client
    open_rid: object = None  # the client's request id until the service accepts
    opening: bool = True
    client_seen: float = field(default_factory=time.monotonic)  # the client's last message


def _capped(credit: int, grant: int) -> int:
    """The part of ``grant`` the broker honours: at most ``MAX_STREAM_CREDIT`` in flight."""
    return max(0, min(grant, limits.MAX_STREAM_CREDIT - credit))


class StreamRouter:
    def __init__(
        self,
        registry: Registry,
        access: LeaseAccess,
        outbox: Outbox,
        metrics: BrokerMetrics,
        identity: Callable[[bytes], str] = lambda ident: "anonymous",
        roles: Roles | None = None,
    ) -> None:
        self.registry = registry
        self.identity = identity  # who a client is (limits; the audit row of a forced write)
        self.roles = roles  # who may read, write, force (None: everyone, as while open)
        self.access = access
        self.outbox = outbox
        self.metrics = metrics
        self.routes: dict[int, Route] = {}
        self.by_client: dict[str, int] = {}  # routes per identity (limits.MAX_STREAMS)
        # Ids start at a random point each broker run, so a client resuming after a
        # restart never collides with a stream some other client opened meanwhile.
        self._next_sid = secrets.randbelow(1 << 40)
        registry.on_health.append(self.health_changed)

    def handle(self, ident: bytes, msg: Message) -> None:
        if msg.mtype == protocol.STREAM_OPEN and not protocol.StreamAccept.is_accept(msg):
            self._open(ident, protocol.StreamOpen.parse(msg))
            return
        sid = msg.sid
        route = self.routes.get(sid) if isinstance(sid, int) else None
        if route is None:
            if msg.mtype != protocol.STREAM_CLOSE:
                reason = "unknown stream (broker restarted or stream closed)"
                self.outbox.send(ident, _broker_close(sid, reason, unknown=True))
            return
        from_client = ident == route.client
        if from_client:
            route.client_seen = time.monotonic()
        elif ident != route.service:
            # not this peer's stream: to it, the stream is unknown (it may be resuming)
            self.outbox.send(ident, _broker_close(sid, "unknown stream", unknown=True))
            return
        if route.opening:
            if from_client:
                return  # nothing may flow before the service accepted
            if msg.mtype == protocol.STREAM_OPEN:
                self._accepted(route, protocol.StreamAccept.parse(msg))
            elif msg.mtype == protocol.STREAM_CLOSE:
                self._drop(route)
                reason = protocol.StreamClose.parse(msg).reason or "refused by the service"
                self.outbox.send(
                    route.client,
                    protocol.Error.of(StreamRefused(reason), route.open_rid).to_frames(),
                )
            return
        if msg.mtype == protocol.STREAM_OPEN:
            raise ProtocolError(f"stream {sid} is already open")
        other = route.service if from_client else route.client
        if msg.mtype == protocol.STREAM_DATA:
            size = protocol.StreamData.parse(msg).size()
            self.metrics.stream_bytes += size
            if from_client:
                if not route.writable:
                    self.close(route, "stream is read-only for this client (no lease)", both=True)
                    return
                # forced bytes reach only a device in maintenance (health_changed closes the
                # route when it ends; this holds on any other path to a new health too)
                if route.forced and (why := self._revoked(route)):
                    self.close(route, why)
                    return
                route.to_service_credit -= size
                overrun = route.to_service_credit < 0
            else:
                route.to_client_credit -= size
                overrun = route.to_client_credit < 0
            if overrun:
                self.close(route, "sender overran its credit", both=True)
                return
        elif msg.mtype == protocol.STREAM_CREDIT:
            grant = protocol.StreamCredit.parse(msg).credit
            if not isinstance(grant, int) or isinstance(grant, bool) or grant < 0:
                raise ProtocolError("credit must be a non-negative integer")
            if grant == 0:
                return  # a liveness ping from the client: the route exists, nothing to pass on
            # honour at most MAX_STREAM_CREDIT in flight, and pass on only what is honoured
            if from_client:
                grant = _capped(route.to_client_credit, grant)
                route.to_client_credit += grant
            else:
                grant = _capped(route.to_service_credit, grant)
                route.to_service_credit += grant
            if grant == 0:
                return
            frames = protocol.StreamCredit(sid, grant).to_frames()
            if not self.outbox.send(other, frames):
                self.close(route, "peer went away", both=True)
            return
        elif msg.mtype == protocol.STREAM_CLOSE:
            self._drop(route)
        if not self.outbox.send(other, protocol.forward(msg)):
            self.close(route, "peer went away", both=True)

    def _open(self, ident: bytes, req: protocol.StreamOpen) -> None:
        dev = self.registry.device_for(req.device)
        name = req.stream
        spec = dev.interface.get("streams", {}).get(name) if isinstance(name, str) else None
        if spec is None:
            known = ", ".join(dev.interface.get("streams", {})) or "none"
            raise StreamRefused(f"device {dev.name!r} has no stream {name!r} (streams: {known})")
        roles = self.roles
        if roles is not None and roles.enforced:  # viewers tail; writing and force are not theirs
            roles.check(ident, "stream.write" if req.write else "stream", dev.name)
            if req.force:
                roles.check(ident, "force", dev.name)
        if not dev.online:
            raise StreamRefused(f"device {dev.name!r} is offline")
        who = self.identity(ident)
        if req.write:
            if not spec.get("writable"):
                raise StreamRefused(f"stream {name!r} of {dev.name!r} is read-only")
            self.access.check(dev, req.lease, f"writing to {name}", req.force, who)
        credit = _capped(0, req.credit)  # StreamOpen.parse checked it is an int >= 0
        limits.check(self.by_client.get(who, 0), limits.MAX_STREAMS, "streams", who)
        self._next_sid += 1
        route = Route(
            sid=self._next_sid,
            client=ident,
            service=dev.ident,
            device=dev.name,
            name=name,
            lease=req.lease if req.write else None,
            writable=req.write,
            # force lets a writer in only while the device is in maintenance (else the lease
            # check above decided, as for anyone): only such a route ends with maintenance
            forced=bool(req.write and req.force and dev.health == "maintenance"),
            who=who,
            to_client_credit=credit,
        )
        offer = protocol.StreamOffer(route.sid, dev.name, name, req.args, req.write, credit)
        if not self.outbox.send(dev.ident, offer.to_frames()):
            raise StreamRefused(f"service of {dev.name!r} is not reachable")
        route.open_rid = req.id
        self.routes[route.sid] = route  # the client hears back once the service accepts
        self.by_client[who] = self.by_client.get(who, 0) + 1

    def _drop(self, route: Route) -> None:
        if self.routes.pop(route.sid, None) is None:
            return
        n = self.by_client.get(route.who, 0) - 1
        if n > 0:
            self.by_client[route.who] = n
        else:
            self.by_client.pop(route.who, None)

    def _accepted(self, route: Route, accept: protocol.StreamAccept) -> None:
        """The service has the stream: answer the client's open, pass on write credit."""
        route.opening = False
        credit = accept.credit
        if not isinstance(credit, int) or credit < 0:
            credit = 0
        credit = _capped(route.to_service_credit, credit)
        route.to_service_credit += credit
        reply = {
            "sid": route.sid,
            "writable": route.writable,
            "device": route.device,
            "stream": route.name,
        }
        self.outbox.send(route.client, protocol.Reply(route.open_rid, reply).to_frames())
        if credit:
            self.outbox.send(route.client, protocol.StreamCredit(route.sid, credit).to_frames())

    def close(self, route: Route, reason: str, both: bool = True) -> None:
        self._drop(route)
        frames = _broker_close(route.sid, reason)
        if route.opening:
            self.outbox.send(
                route.client, protocol.Error.of(StreamRefused(reason), route.open_rid).to_frames()
            )
        else:
            self.outbox.send(route.client, frames)
        if both:
            self.outbox.send(route.service, frames)

    def peer_lost(self, ident: bytes, reason: str) -> None:
        for route in [r for r in self.routes.values() if ident in (r.client, r.service)]:
            self.close(route, reason)

    def sweep(self, silence: float) -> None:
        """Close routes whose client vanished (each heartbeat tick).

        A client that is alive sends on its stream at least every ``PING_AFTER`` while it
        reads (credit, or a 0 credit ping). One silent for ``silence`` gets a 0-credit
        ping: a peer that is gone (killed without closing) cannot be sent to, and its route
        is closed on both ends; one silent ten times as long (hung) is closed too.
        """
        now = time.monotonic()
        hard = max(30.0, 10 * silence)
        for route in [r for r in self.routes.values() if now - r.client_seen > silence]:
            if now - route.client_seen > hard:
                self.close(route, "client went silent", both=True)
            elif not route.opening and not self.outbox.send(
                route.client, protocol.StreamCredit(route.sid, 0).to_frames()
            ):
                self.close(route, "client went away", both=True)

    def lease_ended(self, lease_id: str) -> None:
        for route in [r for r in self.routes.values() if r.lease == lease_id]:
            self.close(route, "lease ended: write access revoked")

    def health_changed(self, dev: Device) -> None:
        """Close ``dev``'s write routes whose access rested on its old health, with the
        reason as the writer's ``stream-closed`` error; its read-only routes stay."""
        for route in [r for r in self.routes.values() if r.device == dev.name and r.writable]:
            why = self._revoked(route)
            if why:
                self.close(route, why)

    def _revoked(self, route: Route) -> str:
        """Why ``route``'s write access no longer holds ('' while it does). A forced writer
        needs no lease only because the device is in maintenance: it ends with maintenance
        (the device may be leased next). Maintenance refuses writes to everyone else, even
        the lease holder (§8). A lease's end is ``lease_ended``'s."""
        dev = self.registry.devices.get(route.device)
        in_maintenance = dev is not None and dev.health == "maintenance"
        if route.forced:
            return "" if in_maintenance else "maintenance ended: forced write access revoked"
        if dev is None or not in_maintenance:
            return ""
        why = f" ({dev.health_reason})" if dev.health_reason else ""
        return f"device in maintenance{why}: write access revoked"
