"""What the broker's parts send with: one peer (the bus) or every subscriber (events).

The lease table, stream router, broker calls and resets get an ``Outbox`` instead of the
broker: they can send and publish, and nothing else.
"""

from __future__ import annotations

from typing import Any

import structlog
import zmq

from .bus import BusSocket
from .events import EventHub
from .metrics import BrokerMetrics

log = structlog.get_logger("broker")


class Outbox:
    def __init__(self, metrics: BrokerMetrics) -> None:
        self.metrics = metrics
        self.bus: BusSocket | None = None  # attached when the broker binds
        self.hub: EventHub | None = None

    def attach(self, bus: BusSocket, hub: EventHub) -> None:
        self.bus, self.hub = bus, hub

    def send(self, ident: bytes, frames: list[Any]) -> bool:
        """Send to one peer now; False if it is gone or full (never blocks, never raises)."""
        assert self.bus is not None
        try:
            if self.bus.send_nowait([ident, *frames]):
                return True
            log.warning("peer not keeping up; message dropped", peer=ident.hex())
        except zmq.ZMQError:
            pass  # EHOSTUNREACH: the peer disconnected
        return False

    def publish(self, topic: str, body: Any) -> None:
        """Publish and journal an event the broker itself writes (a msgpack-able body)."""
        assert self.hub is not None
        self.metrics.published(topic, body)
        self.hub.publish(topic, body)

    def publish_raw(self, topic: str, body: Any, journal: bool = True) -> None:
        """Publish a body that is already msgpack (a service's event, as it came)."""
        assert self.hub is not None
        if journal:
            self.metrics.published(topic, None)
        self.hub.publish_raw(topic, body, journal)
