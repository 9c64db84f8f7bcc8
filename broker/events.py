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

import zmq

from labctl import protocol

from .store import Store


class EventHub:
    def __init__(self, sock: zmq.Socket, store: Store) -> None:
        self.sock = sock
        self.store = store
        self.seq = max(store.last_seq(), store.seq_ceiling())
        self.ceiling = store.reserve_seq(self.seq)

    def publish_raw(self, topic: str, body: Any, journal: bool = True) -> int:
        """Publish a body that is already msgpack (bytes or a zmq.Frame)."""
        if not journal:
            event = protocol.Published(0, time.time(), topic, body)
            with contextlib.suppress(zmq.Again):
                self.sock.send_multipart(event.to_frames(), zmq.NOBLOCK)
            return 0
        self.seq += 1
        if self.seq >= self.ceiling:
            self.ceiling = self.store.reserve_seq(self.seq)
        raw = body.bytes if hasattr(body, "bytes") else bytes(body)
        event = protocol.Published(self.seq, time.time(), topic, raw)
        try:
            self.sock.send_multipart(event.to_frames(), zmq.NOBLOCK)
        except zmq.Again:
            pass  # no subscriber can take it now; the journal still has it
        self.store.add_event(self.seq, event.ts, topic, raw)
        return self.seq

    def publish(self, topic: str, body: Any) -> int:
        return self.publish_raw(topic, protocol.pack(body))
