"""Stream routing: byte streams between a client and a service, forwarded by stream id.

The broker assigns a stream id (sid) that both ends use, so data frames pass through
with their header bytes untouched. It enforces credit: each side may send only as many
payload bytes as the other side granted, so a stalled reader stalls only its own
stream and no stream can make the broker buffer without bound. A sender that overruns
its credit is cut off.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from labctl import protocol
from labctl.errors import ProtocolError, StreamRefused
from labctl.protocol import Message

if TYPE_CHECKING:
    from .server import Broker

log = structlog.get_logger("streams")


@dataclass(slots=True)
class Route:
    sid: int
    client: bytes
    service: bytes
    device: str
    name: str
    lease: str | None
    writable: bool
    to_client_credit: int = 0  # bytes the client granted the service
    to_service_credit: int = 0  # bytes the service granted the client
    open_rid: object = None  # the client's request id until the service accepts
    opening: bool = True


class StreamRouter:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.routes: dict[int, Route] = {}
        # Ids start at a random point each broker run, so a client resuming after a
        # restart never collides with a stream some other client opened meanwhile.
        self._next_sid = secrets.randbelow(1 << 40)

    def handle(self, ident: bytes, msg: Message) -> None:
        if msg.mtype == protocol.STREAM_OPEN and "sid" not in msg.header:
            self._open(ident, msg)
            return
        sid = msg.header.get("sid")
        route = self.routes.get(sid) if isinstance(sid, int) else None
        if route is None:
            if msg.mtype != protocol.STREAM_CLOSE:
                reason = "unknown stream (broker restarted or stream closed)"
                hdr = {"sid": sid, "reason": reason, "unknown": True}
                self.broker.send(ident, protocol.encode(protocol.STREAM_CLOSE, hdr))
            return
        from_client = ident == route.client
        if not from_client and ident != route.service:
            # not this peer's stream: to it, the stream is unknown (it may be resuming)
            hdr = {"sid": sid, "reason": "unknown stream", "unknown": True}
            self.broker.send(ident, protocol.encode(protocol.STREAM_CLOSE, hdr))
            return
        if route.opening:
            if from_client:
                return  # nothing may flow before the service accepted
            if msg.mtype == protocol.STREAM_OPEN:
                self._accepted(route, msg)
            elif msg.mtype == protocol.STREAM_CLOSE:
                self.routes.pop(route.sid, None)
                err = StreamRefused(str(msg.header.get("reason", "refused by the service")))
                self.broker.send(route.client, protocol.error_frames(err, route.open_rid))
            return
        if msg.mtype == protocol.STREAM_OPEN:
            raise ProtocolError(f"stream {sid} is already open")
        other = route.service if from_client else route.client
        if msg.mtype == protocol.STREAM_DATA:
            size = sum(len(f) for f in msg.payload)
            if from_client:
                if not route.writable:
                    self.close(route, "stream is read-only for this client (no lease)", both=True)
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
            grant = msg.header.get("credit", 0)
            if not isinstance(grant, int) or grant < 0:
                raise ProtocolError("credit must be a non-negative integer")
            if from_client:
                route.to_client_credit += grant
            else:
                route.to_service_credit += grant
            if grant == 0:
                return  # a liveness ping from the client: the route exists, nothing to pass on
        elif msg.mtype == protocol.STREAM_CLOSE:
            self.routes.pop(route.sid, None)
        if not self.broker.send(
            other, [protocol.TAG, msg.mtype, protocol.pack(msg.header), *msg.payload]
        ):
            self.close(route, "peer went away", both=True)

    def _open(self, ident: bytes, msg: Message) -> None:
        h = msg.header
        dev = self.broker.device_for(h)
        name = h.get("stream")
        spec = dev.interface.get("streams", {}).get(name) if isinstance(name, str) else None
        if spec is None:
            known = ", ".join(dev.interface.get("streams", {})) or "none"
            raise StreamRefused(f"device {dev.name!r} has no stream {name!r} (streams: {known})")
        if not dev.online:
            raise StreamRefused(f"device {dev.name!r} is offline")
        want_write = bool(h.get("write", False))
        if want_write:
            if not spec.get("writable"):
                raise StreamRefused(f"stream {name!r} of {dev.name!r} is read-only")
            self.broker.leases.check_access(dev, h.get("lease"), f"writing to {name}")
        credit = h.get("credit", 0)
        if not isinstance(credit, int) or credit < 0:
            raise ProtocolError("credit must be a non-negative integer")
        if not isinstance(h.get("args") or {}, dict):
            raise ProtocolError("stream arguments must be a map")
        self._next_sid += 1
        route = Route(
            sid=self._next_sid,
            client=ident,
            service=dev.ident,
            device=dev.name,
            name=name,
            lease=h.get("lease") if want_write else None,
            writable=want_write,
            to_client_credit=credit,
        )
        fwd = {
            "sid": route.sid,
            "device": dev.name,
            "stream": name,
            "args": h.get("args") or {},
            "writable": want_write,
            "credit": credit,
        }
        if not self.broker.send(dev.ident, protocol.encode(protocol.STREAM_OPEN, fwd)):
            raise StreamRefused(f"service of {dev.name!r} is not reachable")
        route.open_rid = h.get("id")
        self.routes[route.sid] = route  # the client hears back once the service accepts

    def _accepted(self, route: Route, msg: Message) -> None:
        """The service has the stream: answer the client's open, pass on write credit."""
        route.opening = False
        credit = msg.header.get("credit", 0)
        if isinstance(credit, int) and credit > 0:
            route.to_service_credit += credit
        reply = {
            "sid": route.sid,
            "writable": route.writable,
            "device": route.device,
            "stream": route.name,
        }
        self.broker.send(
            route.client,
            protocol.encode(protocol.REPLY, {"id": route.open_rid}, protocol.pack(reply)),
        )
        if credit:
            self.broker.send(
                route.client,
                protocol.encode(protocol.STREAM_CREDIT, {"sid": route.sid, "credit": credit}),
            )

    def close(self, route: Route, reason: str, both: bool = True) -> None:
        self.routes.pop(route.sid, None)
        frames = protocol.encode(protocol.STREAM_CLOSE, {"sid": route.sid, "reason": reason})
        if route.opening:
            self.broker.send(
                route.client, protocol.error_frames(StreamRefused(reason), route.open_rid)
            )
        else:
            self.broker.send(route.client, frames)
        if both:
            self.broker.send(route.service, frames)

    def peer_lost(self, ident: bytes, reason: str) -> None:
        for route in [r for r in self.routes.values() if ident in (r.client, r.service)]:
            self.close(route, reason)

    def lease_ended(self, lease_id: str) -> None:
        for route in [r for r in self.routes.values() if r.lease == lease_id]:
            self.close(route, "lease ended: write access revoked")
