"""The broker's settings (``labctl broker run`` options) and its pending-request entry."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labctl import protocol


@dataclass
class BrokerSettings:
    bus: str = "tcp://127.0.0.1:5550"
    events: str = "tcp://127.0.0.1:5551"
    state: Path = field(default_factory=lambda: Path(".labctl-state"))
    heartbeat: float = protocol.HEARTBEAT_INTERVAL
    liveness: int = protocol.HEARTBEAT_LIVENESS
    group_label: str = "dut"
    lease_grace: float = 60.0
    max_payload: int = protocol.MAX_PAYLOAD
    events_public: str | None = None  # the events address peers should use, if not `events`
    dashboard: str | None = None  # HOST:PORT to serve the dashboard on (docs/dashboard.md)
    #: forget devices whose service has been gone this many seconds (None: keep them)
    forget_offline_after: float | None = None
    #: CURVE even on loopback (it is on anyway for a bind beyond loopback; docs/security.md)
    curve: bool = False
    #: serve beyond loopback without CURVE (logged and shown as a warning)
    insecure: bool = False
    #: the authorized_keys file (default: <state>/authorized_keys.yaml)
    authorized_keys: Path | None = None
    #: a public key file authorized in memory as role service for ``services_devices``:
    #: `lab up`'s own services when its broker runs CURVE
    services_key: Path | None = None
    services_devices: tuple[str, ...] = ()


@dataclass(slots=True)
class Pending:
    client: bytes
    client_id: Any
    service: bytes
    deadline: float
    who: str = ""  # the client's identity (limits.MAX_PENDING counts per identity)
