"""The broker: one ROUTER for the bus, one XPUB for events, one trio thread of control.

All message handling is synchronous (no awaits) and runs in the bus loop, which drains
every ready message before it waits again; only timers (heartbeats, lease expiry, journal
flush) run as separate tasks, and SQLite runs on the store thread (``store_thread``).
Nothing here decodes a payload it does not own.

The broker wires small parts together and routes RPC; each part gets only what it needs:
``Registry`` (devices, services, health), ``LeaseTable`` (with its ``WaitQueue``,
``LeaseAccess`` and ``Resets``), ``StreamRouter``, ``BrokerCalls``, an ``Outbox`` to send
and publish with, ``Peers`` (who each connection is).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import Any

import structlog
import trio
import zmq

from labctl import protocol
from labctl.errors import (
    BadRequest,
    DeviceOffline,
    LabError,
    MethodNotFound,
    ProtocolError,
    ServiceGone,
)
from labctl.protocol import Message

from . import auth, limits
from .access import Roles
from .bus import BusSocket
from .calls import BrokerCalls
from .events import EventHub
from .leases import LeaseTable
from .metrics import BrokerMetrics
from .outbox import Outbox
from .peers import Peers
from .registry import Registry
from .settings import BrokerSettings, Pending
from .store import Store
from .store_thread import StoreThread
from .streams import StreamRouter
from .upkeep import BadMessageLog, HeapTrim

log = structlog.get_logger("broker")
#: device events only the broker publishes (a service's would forge health or the audit)
BROKER_EVENTS = frozenset({"health", "forced", "removed"})
HANDSHAKE_MS = 5000  # a connection's handshake (CURVE included) must be done by then


def _more_descriptors() -> None:
    """Raise the soft limit on open files to the hard one: every connection is one, and
    1,024 (a common default) is few for a lab's clients plus peers that never authenticate."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Broker:
    def __init__(self, settings: BrokerSettings, store: Store | None = None) -> None:
        self.settings = settings
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.store = StoreThread(store or Store(settings.state))
        self.registry = Registry()
        # who may connect (CURVE + ZAP), None when the broker runs open; roles read it
        self.auth = auth.curve_table(settings)
        self.curve: auth.CurveServer | None = None
        self.peers = Peers(self.auth)  # roles: every peer is admin while the broker runs open
        self.peers.replaced = self._peer_gone
        self._revoked: set[bytes] = set()  # connections whose key was removed (handled)
        if self.auth is not None:  # a key taken out of authorized_keys: end what it had open
            self.auth.on_change.append(self._keys_changed)
        # who may do what (access.POLICY); each refusal is a (rate-bounded) audit row
        self.roles = Roles(self.peers, lambda *row: self.store.submit(self.store.store.audit, *row))
        self.metrics = BrokerMetrics()
        self.outbox = Outbox(self.metrics)
        self.pending: dict[int, Pending] = {}
        self.pending_by: dict[str, int] = {}  # requests in flight per identity (limits)
        self._next_rid = 0
        self.bus: BusSocket | None = None
        self.events: EventHub | None = None
        self.bus_endpoint = ""
        self.events_endpoint = ""
        self.leases = LeaseTable(
            self.registry,
            self.outbox,
            self.store,
            settings.group_label,
            settings.lease_grace,
            revoke_streams=lambda lease_id: self.streams.lease_ended(lease_id),
        )
        self.streams = StreamRouter(
            self.registry,
            self.leases.access,
            self.outbox,
            self.metrics,
            self.peers.identity,
            self.roles,
        )
        self.calls = BrokerCalls(
            self.registry,
            self.leases,
            self.outbox,
            self.store,
            self.peers,
            self.roles,
            hub=lambda: self.events_hub,
            welcome=self.welcome,
        )
        self.started = time.time()
        self._pruned = 0.0
        self._full = False
        self.heap = HeapTrim()
        self.bad_messages = BadMessageLog()

    # -- life cycle ---------------------------------------------------------------------
    def bind(self) -> None:
        _more_descriptors()
        router = self.ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.SNDHWM, 10000)
        # per peer, at most 1,000 messages wait to be read (a flood queues in its sender), and
        # no frame over twice max_payload is read at all (the peer is disconnected): the
        # broker's inbound memory per peer is bounded, not just counted
        router.setsockopt(zmq.RCVHWM, 1000)
        router.setsockopt(zmq.MAXMSGSIZE, 2 * self.settings.max_payload)
        # a connection that has not finished its handshake by then is closed: peers that
        # connect and say nothing hold a descriptor for seconds, not libzmq's 30 s
        router.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
        if self.auth is not None:  # CURVE: a key not in authorized_keys never gets a frame in
            self.curve = auth.CurveServer(self.ctx, self.settings.state, self.auth)
            if self.settings.services_key is not None:
                self.curve.authorize_services(
                    self.settings.services_key, self.settings.services_devices
                )
            self.curve.serve(router)
        router.bind(self.settings.bus)
        self.bus_endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        xpub = self.ctx.socket(zmq.XPUB)
        xpub.setsockopt(zmq.LINGER, 0)
        xpub.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
        xpub.setsockopt(zmq.SNDHWM, 100000)
        # subscriptions are applied by EventHub within per-identity limits (issue 10), and
        # a subscription over MAX_TOPIC bytes drops its peer
        xpub.setsockopt(zmq.XPUB_MANUAL, 1)
        xpub.setsockopt(zmq.MAXMSGSIZE, limits.MAX_TOPIC + 1)
        if self.curve is not None:
            self.curve.serve(xpub)
        xpub.bind(self.settings.events)
        self.events_endpoint = xpub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.bus = BusSocket(router, self.peers)
        self.events = EventHub(xpub, self.store, self.peers.who)
        self.outbox.attach(self.bus, self.events)
        self.leases.load()

    async def serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.bind()
        self.store.start()  # from here on, SQLite only on the store thread
        log.info(
            "broker listening",
            bus=self.bus_endpoint,
            events=self.events_endpoint,
            curve=self.curve.public.decode() if self.curve else "off",
        )
        self.publish("broker.started", {"bus": self.bus_endpoint, "pid": os.getpid()})
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._bus_loop)
                nursery.start_soon(self._housekeeping)
                nursery.start_soon(self.leases.run)
                nursery.start_soon(self.events_hub.serve)  # (un)subscriptions, counted
                if self.auth is not None:  # authorized_keys: reload on change and SIGHUP
                    nursery.start_soon(self.auth.watch)
                if self.settings.dashboard:  # read-only, through the SDK on our own bus
                    from .dashboard import serve_dashboard

                    await nursery.start(serve_dashboard, self.settings.dashboard, self)
                task_status.started(self)
        finally:
            assert self.bus is not None and self.events is not None
            self.events.flush()
            self.store.stop()  # writes what is queued, closes the database, joins
            self.bus.close()
            self.events.sock.close(0)
            if self.curve is not None:
                self.curve.close()

    # -- the bus loop -------------------------------------------------------------------
    async def _bus_loop(self) -> None:
        assert self.bus is not None
        await self.bus.serve(self._handle)

    def _handle(self, frames: list[Any]) -> None:
        ident = frames[0]
        self.heap.handled += 1
        try:
            msg = protocol.decode(frames[1:], self.settings.max_payload)
        except ProtocolError as err:
            self.bad_messages.warn(ident, err.message)
            self.send(ident, protocol.Error.of(err, err.details.pop("id", None)).to_frames())
            return
        svc = self.registry.services.get(ident)
        if svc is not None:
            svc.last_seen = time.monotonic()
            if msg.mtype != protocol.REGISTER:
                svc.settled = True  # it spoke after its REGISTER: a session, not a drive-by
        try:
            handler = self._handlers.get(msg.mtype)
            if handler is None:
                raise ProtocolError(f"the broker does not accept {msg.name} messages")
            handler(self, ident, msg)
        except LabError as err:
            if msg.mtype == protocol.REQUEST:
                self.metrics.rpc_refused(_method_of(msg), err.code)
            self.send(ident, protocol.Error.of(err, msg.id).to_frames())
        except Exception as exc:  # a bug must not take the broker down
            log.exception("handler failed", type=msg.name)
            bug = LabError(f"broker internal error: {type(exc).__name__}: {exc}")
            self.send(ident, protocol.Error.of(bug, msg.id).to_frames())

    def send(self, ident: bytes, frames: list[Any]) -> bool:
        """Send to one peer now; False if it is gone or full (never blocks, never raises)."""
        return self.outbox.send(ident, frames)

    # -- registration and liveness ------------------------------------------------------
    def _on_register(self, ident: bytes, msg: Message) -> None:
        reg = protocol.Register.parse(msg)
        if self.roles.enforced:  # a service key registers only the names its globs allow
            names = [d["name"] for d in reg.devices if isinstance(d, dict) and "name" in d]
            self.roles.check_register(
                ident, [n for n in names if isinstance(n, str)], self.registry.devices
            )
        svc, devices, dropped = self.registry.register(ident, reg, self.peers.identity(ident))
        for dev in dropped:
            self.publish(
                f"device.{dev.name}.online",
                {"online": False, "reason": "no longer registered by its service"},
            )
        for dev in devices:
            self.leases.device_registered(dev)
        self.send(ident, self.welcome().to_frames())
        log.info("service registered", service=svc.name, devices=len(devices), host=svc.host)
        for dev in devices:
            self.publish(f"device.{dev.name}.online", {"online": dev.online, "service": svc.name})
        self.leases.poke()

    def welcome(self) -> protocol.Welcome:
        return protocol.Welcome(
            events=self.settings.events_public or self.events_endpoint,
            heartbeat=self.settings.heartbeat,
            liveness=self.settings.liveness,
            broker=socket.gethostname(),
            started=self.started,
            group_label=self.settings.group_label,
        )

    def _on_heartbeat(self, ident: bytes, msg: Message) -> None:
        if ident not in self.registry.services and protocol.Heartbeat.parse(msg).role == "service":
            # A service we do not know (we restarted, or it timed out): make it register.
            self.send(ident, protocol.Disconnect("unknown peer").to_frames())

    def _on_disconnect(self, ident: bytes, msg: Message) -> None:
        self._service_lost(ident, protocol.Disconnect.parse(msg).reason)

    def _service_lost(self, ident: bytes, reason: str) -> None:
        svc = self.registry.services.get(ident)
        lost = self.registry.service_lost(ident)
        if svc is not None:
            log.warning("service offline", service=svc.name, reason=reason)
        for dev in lost:
            self.publish(f"device.{dev.name}.online", {"online": False, "reason": reason})
        if svc is not None and not svc.settled:
            # registered and never spoke again: nothing to keep its devices for
            self.registry.forget(svc, keep=self.leases.owed_reset)
        for rid, p in list(self.pending.items()):
            if p.service == ident:
                self._forget(rid)
                self.metrics.rpc_done(rid, "service-gone")
                self.send(
                    p.client,
                    protocol.Error.of(
                        ServiceGone(f"service went away: {reason}"), p.client_id
                    ).to_frames(),
                )
        self.leases.resets.service_lost(ident)
        self.streams.peer_lost(ident, f"service went away: {reason}")

    def _peer_gone(self, ident: bytes, reason: str) -> None:
        """What the broker kept for a connection that is no more: its service and devices
        (offline), its stream routes (closed both ends)."""
        if ident in self.registry.services:
            self._service_lost(ident, reason)
        self.streams.peer_lost(ident, reason)

    def _keys_changed(self) -> None:
        revoked = set(self.peers.revoked())
        for ident in revoked - self._revoked:  # each once, however many reloads follow
            log.warning("key removed from authorized_keys: its connection's state ends",
                        identity=self.peers.identity(ident))  # fmt: skip
            self._peer_gone(ident, "its key was removed from authorized_keys")
            # still known by its identity: what it asks next is refused naming it
        self._revoked = revoked
        for ident, svc in list(self.registry.services.items()):  # globs narrowed?
            outside = self.roles.not_allowed_names(ident, svc.devices)
            if outside:
                log.warning("a service's key no longer allows a name it registered",
                            service=svc.name, device=outside[0])  # fmt: skip
                self._service_lost(ident, f"its key no longer allows {outside[0]!r}")

    async def _housekeeping(self) -> None:
        s = self.settings
        while True:
            await trio.sleep(s.heartbeat)
            now = time.monotonic()
            hb = protocol.Heartbeat().to_frames()
            for ident, svc in list(self.registry.services.items()):
                if now - svc.last_seen > s.heartbeat * s.liveness:
                    self._service_lost(ident, "heartbeat timeout")
                else:
                    self.send(ident, hb)
            for rid, p in list(self.pending.items()):
                if p.deadline < now - 1.0:  # the caller gave up: forget the route
                    self._forget(rid)
                    self.metrics.rpc_done(rid, "timeout")
            self.streams.sweep(s.heartbeat * s.liveness)
            assert self.bus is not None
            self.bus.look()  # a safety net: a message no edge announced waits one tick at most
            wall = time.time()
            self.leases.tick()
            self.calls.forget_offline(s.forget_offline_after)
            self.leases.queue.remind()
            self.events_hub.flush()
            self.store.recover()  # a full disk: has space come back?
            subscriptions = self.events_hub.subscriptions
            self.heap.handled += subscriptions.handled  # a subscription flood leaves heap too
            subscriptions.handled = 0
            self.heap.tick()
            self._storage_changed()
            if wall - self._pruned > 3600:
                self._pruned = wall
                self.store.submit(self.store.store.prune)

    def _storage_changed(self) -> None:
        """Say so (log, event, ``hello``'s ``storage``) when the state disk fills or frees."""
        if self.store.full == self._full:
            return
        self._full = self.store.full
        status = {**self.store.status(), "unjournaled": self.events_hub.unjournaled}
        if self._full:
            log.error("state disk full: serving on, lease changes refused", **status)
        else:
            log.warning("state disk writable again: lease changes accepted", **status)
        self.publish("broker.storage", status)

    # -- RPC routing --------------------------------------------------------------------
    def _on_request(self, ident: bytes, msg: Message) -> None:
        req = protocol.Request.parse(msg)
        dev = self.registry.device_for(req.device)
        method = req.method
        spec = dev.method(method) if isinstance(method, str) else None
        if spec is None:
            known = ", ".join(sorted(dev.interface.get("methods", {})))
            raise MethodNotFound(
                f"device {dev.name!r} ({dev.kind}) has no method {method!r}; it has: {known}",
                {"device": dev.name, "method": method},
            )
        if self.roles.enforced:  # viewers call read-only methods; force is an admin's
            self.roles.check(ident, "method.mutating" if spec.get("mutating") else "method",
                             dev.name)  # fmt: skip
            if req.force:
                self.roles.check(ident, "force", dev.name)
        if not dev.service_alive:  # an unreachable port or plug still answers status and logs
            raise DeviceOffline(f"device {dev.name!r} is offline ({dev.offline_reason()})")
        who = self.peers.known.get(ident, "anonymous")  # Peers.identity, inlined (RPC path)
        if spec.get("mutating"):
            self.leases.access.check(dev, req.lease, f"{method}()", req.force, who)
        limits.check(self.pending_by.get(who, 0), limits.MAX_PENDING, "pending requests", who)
        timeout = req.timeout
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            timeout = protocol.DEFAULT_TIMEOUT
        deadline = time.monotonic() + timeout  # relative on the wire: no clock skew matters
        self._next_rid += 1
        rid = self._next_rid
        client_id, req.id, req.timeout = req.id, rid, timeout
        req.force = req.lease = None  # the broker's business (checked above): a lease id is
        # its holder's credential, and a service has no use for it
        if self.send(dev.ident, req.to_frames()):
            self.pending[rid] = Pending(ident, client_id, dev.ident, deadline, who)
            self.pending_by[who] = self.pending_by.get(who, 0) + 1
            self.metrics.rpc_sent(rid, method)
        else:
            raise ServiceGone(f"service {dev.service!r} of {dev.name!r} is not reachable")

    def _on_reply(self, ident: bytes, msg: Message) -> None:
        rid = msg.id
        p = self.pending.get(rid) if isinstance(rid, int) else None
        if p is None or p.service != ident:
            if p is None:
                self.leases.resets.answered(ident, msg)  # a reset's answer, or nothing
            return  # late reply after a timeout, or a confused peer: nothing to route
        self._forget(rid)
        outcome = "ok" if msg.mtype == protocol.REPLY else protocol.Error.parse(msg).code
        self.metrics.rpc_done(rid, outcome)
        self.send(p.client, protocol.forward(msg, id=p.client_id))

    def _forget(self, rid: int) -> Pending:
        p = self.pending.pop(rid)
        n = self.pending_by.get(p.who, 0) - 1
        if n > 0:
            self.pending_by[p.who] = n
        else:
            self.pending_by.pop(p.who, None)
        return p

    def _on_call(self, ident: bytes, msg: Message) -> None:
        self.calls.dispatch(ident, msg)

    def _on_event(self, ident: bytes, msg: Message) -> None:
        svc = self.registry.services.get(ident)
        event = protocol.Event.parse(msg)
        topic = event.topic
        if svc is None or not isinstance(topic, str) or event.body is None:
            raise BadRequest("events need a registered service, a topic and a body")
        if self.roles.enforced:
            self.roles.check(ident, "publish", topic)
        parts = topic.split(".")
        if len(parts) < 3 or parts[0] != "device" or ".".join(parts[1:-1]) not in svc.devices:
            raise BadRequest(f"service {svc.name!r} may not publish on {topic!r}")
        name, what = ".".join(parts[1:-1]), parts[-1]
        if what in BROKER_EVENTS:
            raise BadRequest(
                f"service {svc.name!r} may not publish {topic!r}: the broker publishes "
                f"device {', '.join(sorted(BROKER_EVENTS))} events itself"
            )
        dev = self.registry.devices[name]
        try:  # a body nobody can decode must not reach the journal or subscribers
            body = event.value()
        except ProtocolError as exc:
            raise BadRequest(exc.message) from None
        if what == "status":
            dev.status = body
            dev.status_ts = time.time()
        elif what == "online":
            if not isinstance(body, dict):
                raise BadRequest("online body must be a map {online, reason}")
            dev.reachable = bool(body.get("online"))
            dev.reachable_reason = str(body.get("reason", ""))
            self.leases.poke()
        self.outbox.publish_raw(topic, event.body)

    # -- streams (see streams.py) -------------------------------------------------------
    def _on_stream(self, ident: bytes, msg: Message) -> None:
        self.streams.handle(ident, msg)

    @property
    def events_hub(self) -> EventHub:
        assert self.events is not None
        return self.events

    def publish(self, topic: str, body: Any) -> None:
        self.outbox.publish(topic, body)

    _handlers = {
        protocol.REGISTER: _on_register,
        protocol.HEARTBEAT: _on_heartbeat,
        protocol.DISCONNECT: _on_disconnect,
        protocol.REQUEST: _on_request,
        protocol.REPLY: _on_reply,
        protocol.ERROR: _on_reply,
        protocol.CALL: _on_call,
        protocol.EVENT: _on_event,
        protocol.STREAM_OPEN: _on_stream,
        protocol.STREAM_DATA: _on_stream,
        protocol.STREAM_CREDIT: _on_stream,
        protocol.STREAM_CLOSE: _on_stream,
    }


def _method_of(msg: Message) -> str:
    """The method a refused REQUEST named, for the metrics ("?" if it was not readable)."""
    try:
        method = protocol.Request.parse(msg).method
    except LabError:
        return "?"
    return method if isinstance(method, str) else "?"


async def run_broker(settings: BrokerSettings) -> None:
    await Broker(settings).serve()
