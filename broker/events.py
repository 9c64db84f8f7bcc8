"""Publishing events: sequence numbers, timestamps, the XPUB socket and the journal.

Wire form on the events socket (``protocol.Published``): ``[topic, msgpack {seq, ts, topic},
body]`` where body is the msgpack the publisher sent, forwarded as it came. XPUB drops messages for a
subscriber that falls a high-water mark behind: events are best effort live, and the
journal (``labctl events --since``) is the record.

Subscriptions are counted per identity (``Subscriptions``): the XPUB is in manual mode, so
libzmq applies none by itself; each one is read here and applied only within the limits.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import structlog
import trio
import zmq

from labctl import multipart, protocol

from . import limits
from .store import Store
from .store_thread import StoreThread

log = structlog.get_logger("events")
MAX_BUFFERED = 4 << 20  # bytes of journal rows held between ticks
DRAIN_BATCH = 4096  # (un)subscriptions handled before the loop lets others run
WARN_EVERY = 60.0  # seconds: a refused subscription is logged (and published) once per identity


class EventHub:
    """Publishes on the XPUB socket and buffers journal rows for the store thread."""

    def __init__(
        self, sock: zmq.Socket, store: StoreThread, who: Callable[[Any], str] | None = None
    ) -> None:
        self.sock = sock
        self.store = store
        #: subscriptions per identity (``who``: a received frame's identity, ``Peers.who``)
        self.subscriptions = Subscriptions(sock, who or (lambda frame: ""), self._over)
        db: Store = store.store
        self.seq = max(db.last_seq(), db.seq_ceiling())  # at start, before the thread runs
        self.ceiling = self.seq + Store.SEQ_BLOCK
        store.submit(db.reserve_seq, self.seq, durable=True)
        self._rows: list[tuple[int, float, str, bytes]] = []
        self._rows_bytes = 0
        self.unjournaled = 0  # events published but never journaled (disk full, buffer full)

    def flush(self) -> None:
        """Hand the buffered journal rows to the store thread (each tick, before a query)."""
        if self._rows:
            rows, self._rows, self._rows_bytes = self._rows, [], 0
            if self.store.full:  # published live; the journal cannot take them now
                self._lost(len(rows))
                return
            self.store.submit(
                self.store.store.insert_events,
                rows,
                then=lambda r: self._lost(len(rows)) if isinstance(r, Exception) else None,
            )

    def _lost(self, n: int) -> None:
        if not self.unjournaled:
            log.error("events could not be journaled (state disk full?)", count=n)
        self.unjournaled += n

    def publish_raw(self, topic: str, body: Any, journal: bool = True) -> int:
        """Publish a body that is already msgpack (bytes or a zmq.Frame)."""
        if not journal:
            event = protocol.Published(0, time.time(), topic, body)
            with contextlib.suppress(zmq.Again):
                multipart.send(self.sock, event.to_frames(), multipart.NOBLOCK)
            return 0
        self.seq += 1
        if self.seq >= self.ceiling:
            self.ceiling = self.seq + Store.SEQ_BLOCK
            self.store.submit(self.store.store.reserve_seq, self.seq, durable=True)
        raw = body.bytes if hasattr(body, "bytes") else bytes(body)
        event = protocol.Published(self.seq, time.time(), topic, raw)
        try:
            multipart.send(self.sock, event.to_frames(), multipart.NOBLOCK)
        except zmq.Again:
            pass  # no subscriber can take it now; the journal still has it
        if self.subscriptions.parked:
            self.subscriptions.look()  # the send may have taken the edge serve() sleeps on
        self._rows.append((self.seq, event.ts, topic, raw))
        self._rows_bytes += len(raw) + len(topic)
        if self._rows_bytes > MAX_BUFFERED:
            self.flush()  # a burst of big events is written at once, not held for a tick
        return self.seq

    def publish(self, topic: str, body: Any) -> int:
        return self.publish_raw(topic, protocol.pack(body))

    async def serve(self) -> None:
        """Read (un)subscriptions as they come (a task of the broker's nursery)."""
        await self.subscriptions.serve()

    def _over(self, identity: str, maximum: int) -> None:
        """An identity's refused subscription (at most once a minute per identity):
        an event says so to whoever watches ``broker.*`` (the SDK hears it from ``sync``)."""
        self.publish("broker.limit", {"identity": identity, "limit": "subscriptions",
                                      "max": maximum})  # fmt: skip


class Subscriptions:
    """Event subscriptions per identity, applied only within the limits.

    The XPUB is in manual mode (``ZMQ_XPUB_MANUAL``): libzmq hands every (un)subscription
    to us and applies none; ``setsockopt(SUBSCRIBE)`` right after receiving one applies it to
    the connection it came from. Subscribing messages carry the connection's ZMTP metadata
    (``who``: User-Id under CurveZMQ, else the SDK's X-Labctl-User, else the peer address);
    an identity with ``limits.MAX_SUBSCRIPTIONS`` applied (or everyone together with
    ``MAX_SUBSCRIPTIONS_TOTAL``) gets no more: refused, logged once per identity (a minute),
    published as ``broker.limit``. The SDK subscribes its topic prefix and then
    ``sync.<token>`` on one connection, so a refused prefix means a refused sync topic: the
    ``sync`` call for that token answers ``limit``, and the subscription fails with it.

    When a connection closes, libzmq sends an unsubscription for each topic it had asked for
    (refused ones too), with no metadata: the identity is inferred from who holds that topic,
    preferring identities that alone hold some other topic of the same batch. Per topic the
    counts stay exact; only which of several identities sharing a topic is charged may be
    swapped until their connections close. (libzmq itself keeps each connection's requested
    topics until it closes, refused or not; a topic is at most ``MAX_TOPIC`` bytes, and a
    connection refused ``MAX_REFUSED_SUBSCRIPTIONS`` times is cut off: ``_count_refusal``.)
    """

    def __init__(
        self,
        sock: zmq.Socket,
        who: Callable[[Any], str],
        over: Callable[[str, int], None],
        maximum: int = limits.MAX_SUBSCRIPTIONS,
        total_max: int = limits.MAX_SUBSCRIPTIONS_TOTAL,
    ) -> None:
        self.sock, self.who, self.over = sock, who, over
        self.maximum, self.total_max = maximum, total_max
        self.count: dict[str, int] = {}  # identity -> subscriptions applied
        self.holders: dict[bytes, dict[str, int]] = {}  # topic -> identity -> applied
        self.refused_by: dict[bytes, dict[str, int]] = {}  # topic -> identity -> refused
        self.refused_records = 0
        self.total = 0
        self.refused = 0  # refused since start
        #: sync tokens whose ``sync.<token>`` subscription was refused: that ``sync`` call
        #: answers ``limit`` (the SDK subscribes its prefix, then that topic: refused too)
        self.refused_sync: dict[str, str] = {}
        self.warned: dict[str, float] = {}  # identity -> when its refusal was last logged
        #: (descriptor, peer) -> subscriptions refused on that connection (_count_refusal)
        self.refused_on: dict[tuple[int, str], int] = {}
        self.max_refused = limits.MAX_REFUSED_SUBSCRIPTIONS
        self.cut_off = 0  # connections cut off since start
        self.handled = 0  # (un)subscriptions read; the broker's heap trim counts them
        self.parked = False
        self._due = False

    # -- reading ------------------------------------------------------------------------
    async def serve(self) -> None:
        fd = self.sock.FD
        while True:
            if self.drain() >= DRAIN_BATCH:  # a flood: let the bus loop and timers run too
                await trio.lowlevel.checkpoint()
                continue
            self.parked = True
            try:
                await trio.lowlevel.wait_readable(fd)
            finally:
                self.parked = False

    def look(self) -> None:
        """serve() sleeps on an edge-triggered FD: after a send, drain soon if one waits."""
        if not self._due and multipart.events(self.sock) & multipart.POLLIN:
            self._due = True
            trio.lowlevel.current_trio_token().run_sync_soon(self._look_now)

    def _look_now(self) -> None:
        self._due = False
        if self.drain() >= DRAIN_BATCH and self.parked:
            self.look()  # more wait, and serve() still sleeps: another batch soon

    def drain(self) -> int:
        """Handle the waiting (un)subscriptions, at most ``DRAIN_BATCH``; returns how many."""
        n = 0
        cleanups: list[bytes] = []
        sock = self.sock
        while n < DRAIN_BATCH:
            try:
                frame = sock.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            n += 1
            if frame.more:  # not a subscription (a message sent upstream): dropped whole
                while frame.more:
                    frame = sock.recv(0, copy=False)
                continue
            data = frame.bytes
            if not data or data[0] > 1:
                continue
            topic = data[1:]
            who = self.who(frame)
            if data[0] == 1:
                if not self._subscribe(who or "anonymous", topic):
                    self._count_refusal(frame, who or "anonymous")
            elif who:
                self._unsubscribe(who, topic)
            else:  # libzmq's cleanup after a connection closed: no metadata, no pipe
                cleanups.append(topic)
        if cleanups:
            self._cleanup(cleanups)
        self.handled += n
        return n

    # -- accounting ---------------------------------------------------------------------
    def _subscribe(self, who: str, topic: bytes) -> bool:
        """Apply it if within the limits; False if refused."""
        n = self.count.get(who, 0)
        if n >= self.maximum or self.total >= self.total_max:
            self._refuse(who, topic)
            return False
        self.sock.setsockopt(zmq.SUBSCRIBE, topic)  # to the connection it came from
        self.count[who] = n + 1
        self.total += 1
        held = self.holders.setdefault(topic, {})
        held[who] = held.get(who, 0) + 1
        return True

    def _count_refusal(self, frame: Any, who: str) -> None:
        """A connection that goes on asking past its limit is cut off: libzmq keeps every
        topic a connection asked for (refused too) until it closes, and XPUB cannot close
        one peer, so its socket is shut down (``shutdown``, never ``close``: the descriptor
        stays libzmq's) and libzmq drops the connection and all it held."""
        try:
            fd = frame.get(zmq.SRCFD)  # the connection's socket (deprecated, still served)
            with socket.socket(fileno=os.dup(fd)) as conn:
                key = (fd, str(conn.getpeername()))  # a reused descriptor is a new peer
                n = self.refused_on.get(key, 0) + 1
                if n < self.max_refused:
                    if len(self.refused_on) > 10_000:
                        self.refused_on.clear()
                    self.refused_on[key] = n
                    return
                self.refused_on.pop(key, None)
                conn.shutdown(socket.SHUT_RDWR)
        except (zmq.ZMQError, OSError, ValueError):
            return  # gone already, or not a socket we can see: nothing to cut
        self.cut_off += 1
        log.warning(
            "events connection cut off: it kept subscribing past its limit",
            identity=who,
            refused=n,
        )

    def _unsubscribe(self, who: str, topic: bytes) -> None:
        """An unsubscription from a live connection (its own metadata)."""
        self.sock.setsockopt(zmq.UNSUBSCRIBE, topic)  # from that connection; no-op if refused
        if not _take(self.refused_by, topic, who, self._refused_taken):  # over-count if wrong
            _take(self.holders, topic, who, self._released)

    def _cleanup(self, topics: list[bytes]) -> None:
        """Connections closed: charge each topic to an identity that holds it, preferring
        the identities that alone hold some topic of this batch (whose connection it was)."""
        closing: set[str] = set()
        for topic in topics:
            for table in (self.refused_by, self.holders):
                ids = table.get(topic)
                if ids is not None and len(ids) == 1:
                    closing.update(ids)
        for topic in topics:
            for table, taken in ((self.refused_by, self._refused_taken),
                                 (self.holders, self._released)):  # fmt: skip
                ids = table.get(topic)
                if ids:
                    who = next((i for i in ids if i in closing), next(iter(ids)))
                    _take(table, topic, who, taken)
                    break

    def _released(self, who: str) -> None:
        self.total -= 1
        n = self.count.get(who, 0) - 1
        if n > 0:
            self.count[who] = n
        else:
            self.count.pop(who, None)

    def _refused_taken(self, who: str) -> None:
        self.refused_records -= 1

    def _refuse(self, who: str, topic: bytes) -> None:
        self.refused += 1
        if topic.startswith(b"sync."):
            if len(self.refused_sync) > 10_000:  # tokens never asked about
                self.refused_sync.clear()
            self.refused_sync[topic[5:].decode("utf-8", "replace")] = who
        if len(self.warned) > 100_000:
            self.warned.clear()
        if self.refused_records < self.total_max:  # to charge its cleanup to the right one
            ids = self.refused_by.setdefault(topic, {})
            ids[who] = ids.get(who, 0) + 1
            self.refused_records += 1
        now = time.monotonic()
        if now - self.warned.get(who, -WARN_EVERY) >= WARN_EVERY:
            self.warned[who] = now
            total = self.total >= self.total_max
            log.warning(
                "event subscription refused: over the limit",
                identity=who,
                topic=topic[:80].decode("utf-8", "replace"),
                max=self.total_max if total else self.maximum,
                limit="all subscriptions" if total else "subscriptions",
            )
            self.over(who, self.maximum)

    def refused_token(self, token: str) -> str | None:
        """Who subscribed to ``sync.<token>`` and was refused (forgotten once asked)."""
        return self.refused_sync.pop(token, None)

    def status(self) -> dict[str, int]:
        return {"total": self.total, "identities": len(self.count), "refused": self.refused,
                "max": self.maximum, "cut_off": self.cut_off}  # fmt: skip


def _take(
    table: dict[bytes, dict[str, int]], topic: bytes, who: str, taken: Callable[[str], None]
) -> bool:
    """Remove one (topic, who) from ``table``; False if it has none."""
    ids = table.get(topic)
    if not ids or who not in ids:
        return False
    n = ids[who] - 1
    if n > 0:
        ids[who] = n
    else:
        del ids[who]
        if not ids:
            del table[topic]
    taken(who)
    return True
