"""Publishing events: sequence numbers, timestamps, the XPUB socket and the journal.

Wire form on the events socket (``protocol.Published``): ``[topic, msgpack {seq, ts, topic},
body]`` where body is the msgpack the publisher sent, forwarded as it came. XPUB drops messages for a
subscriber that falls a high-water mark behind: events are best effort live, and the
journal (``labctl events --since``) is the record.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import structlog
import zmq

from labctl import multipart, protocol

from .store import Store
from .store_thread import StoreThread

log = structlog.get_logger("events")
MAX_BUFFERED = 4 << 20  # bytes of journal rows held between ticks


class EventHub:
    """Publishes on the XPUB socket and buffers journal rows for the store thread."""

    def __init__(self, sock: zmq.Socket, store: StoreThread) -> None:
        self.sock = sock
        self.store = store
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
        self._rows.append((self.seq, event.ts, topic, raw))
        self._rows_bytes += len(raw) + len(topic)
        if self._rows_bytes > MAX_BUFFERED:
            self.flush()  # a burst of big events is written at once, not held for a tick
        return self.seq

    def publish(self, topic: str, body: Any) -> int:
        return self.publish_raw(topic, protocol.pack(body))
