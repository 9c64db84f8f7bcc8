"""Every device the broker knows, the services that drive them, their health, and label
queries.

Health (PROTOCOL.md §8) is the registry's: ``good``, ``maintenance`` (an admin's) or ``bad``
(a failed check or reset); only ``good`` devices are allocated. It is remembered by name, so
it outlives a device's registration and (persisted by the broker) a broker restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from labctl.errors import (
    BadRequest,
    DeviceBusy,
    DeviceNotFound,
    DuplicateName,
    LabError,
    LimitExceeded,
    ProtocolError,
)
from labctl.protocol import Register
from labctl.selector import Selector

from .limits import MAX_DEVICES

BUILTIN_LABELS = ("name", "kind", "driver", "host")
HEALTH = ("good", "maintenance", "bad")


@dataclass(slots=True)
class Service:
    ident: bytes
    name: str
    host: str
    pid: int
    version: str
    devices: list[str]
    last_seen: float = field(default_factory=time.monotonic)
    alive: bool = True
    settled: bool = False  # spoke again after its REGISTER (a session, not a drive-by)


@dataclass(slots=True)
class Device:
    name: str
    kind: str
    driver: str
    labels: dict[str, str]
    interface: dict[str, Any]
    service: str
    ident: bytes
    on_release: str = "reset"
    owner: str = ""  # the identity that registered it (its key's, under CurveZMQ)
    service_alive: bool = True
    reachable: bool = True
    reachable_reason: str = ""
    health: str = "good"
    health_reason: str = ""
    lease: str | None = None
    status: Any = None
    status_ts: float = 0.0
    lost_at: float = 0.0  # monotonic time its service went away (forget_offline_after)

    @property
    def online(self) -> bool:
        return self.service_alive and self.reachable

    def method(self, name: str) -> dict[str, Any] | None:
        return self.interface.get("methods", {}).get(name)

    def summary(self, holder: str | None = None, lease_ref: str | None = None) -> dict[str, Any]:
        """The public view; ``lease`` is the lease's public ref, never its id."""
        return {
            "name": self.name,
            "kind": self.kind,
            "driver": self.driver,
            "labels": self.labels,
            "online": self.online,
            "offline_reason": "" if self.online else self.offline_reason(),
            "health": self.health,
            "health_reason": self.health_reason,
            "lease": lease_ref,
            "holder": holder,
            "status": self.status,
            "status_ts": self.status_ts,  # when the service last published it (epoch s)
            "service": self.service,
        }

    def offline_reason(self) -> str:
        if not self.service_alive:
            return f"service {self.service} not heard from"
        return self.reachable_reason or "hardware unreachable"


class Registry:
    """Devices by name and services by routing id; the broker's single source of truth."""

    def __init__(self) -> None:
        self.devices: dict[str, Device] = {}
        self.services: dict[bytes, Service] = {}
        #: health by device name, also for devices not registered (yet, or any more)
        self.health: dict[str, tuple[str, str]] = {}
        #: told each health change (an admin's or the broker's), after it is made: the
        #: stream router revokes write access that rested on the old health
        self.on_health: list[Callable[[Device], None]] = []

    def device_for(self, name: Any) -> Device:
        """The device a request names; BadRequest / DeviceNotFound (the error replies)."""
        if not isinstance(name, str):
            raise BadRequest("request header needs a 'device' name")
        dev = self.devices.get(name)
        if dev is None:
            raise DeviceNotFound(f"no device named {name!r}", {"device": name})
        return dev

    def set_health(self, name: str, health: str, reason: str) -> Device:
        """Set a registered device's health; BadRequest / DeviceNotFound if it cannot be."""
        if health not in HEALTH:
            raise BadRequest(f"health must be good, maintenance or bad, not {health!r}")
        dev = self.devices.get(name)
        if dev is None:
            raise DeviceNotFound(f"no device named {name!r}", {"device": name})
        dev.health, dev.health_reason = health, reason
        self.health[name] = (health, reason)
        for changed in self.on_health:
            changed(dev)
        return dev

    def register(
        self, ident: bytes, reg: Register, owner: str = ""
    ) -> tuple[Service, list[Device], list[Device]]:
        """Add a service and its devices; DuplicateName if a live holder has a name.

        Returns the service, its devices, and devices it registered before but not now.
        """
        if len(reg.devices) > MAX_DEVICES:
            raise LimitExceeded(
                f"a service registers at most {MAX_DEVICES} devices, not {len(reg.devices)}",
                {"limit": "devices", "max": MAX_DEVICES},
            )
        try:
            svc, parsed = self._parse(ident, reg)
        except LabError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProtocolError(f"malformed registration: {exc}") from None
        # nothing above touched the registry: a bad registration leaves it as it was
        old = self.services.pop(ident, None)
        dropped = self._forget_devices(old, keep={d.name for d in parsed}) if old else []
        self.services[ident] = svc
        for dev in parsed:
            dev.owner = owner
            previous = self.devices.get(dev.name)
            if previous is not None:  # keep what the broker owns across re-registration
                dev.lease, dev.status = previous.lease, previous.status
            if dev.name in self.health:
                dev.health, dev.health_reason = self.health[dev.name]
            self.devices[dev.name] = dev
        return svc, parsed, dropped

    def _parse(self, ident: bytes, reg: Register) -> tuple[Service, list[Device]]:
        """Validate a registration completely before anything is changed."""
        svc_name = str(reg.service)
        entries = list(reg.devices)
        host = str(reg.host)
        parsed: list[Device] = []
        seen: set[str] = set()
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise ProtocolError("each registered device needs a string 'name'")
            if not 0 < len(entry["name"]) <= 200:
                raise ProtocolError("a device name has 1 to 200 characters")
            _check_interface(entry["name"], entry.get("interface") or {})
            name = entry["name"]
            if name in seen:
                raise ProtocolError(f"device name {name!r} appears twice in one registration")
            seen.add(name)
            held = self.devices.get(name)
            if held is not None and held.service_alive and held.ident != ident:
                holder = self.services.get(held.ident)
                where = f" on {holder.host} (pid {holder.pid})" if holder else ""
                raise DuplicateName(
                    f"device name {name!r} is already registered by service "
                    f"{held.service!r}{where}",
                    {"device": name, "holder": held.service},
                )
            labels = {str(k): str(v) for k, v in dict(entry.get("labels") or {}).items()}
            kind, driver = str(entry.get("kind", "")), str(entry.get("driver", ""))
            labels.update(name=name, kind=kind, driver=driver, host=host)
            parsed.append(
                Device(
                    name=name,
                    kind=kind,
                    driver=driver,
                    labels=labels,
                    interface=dict(entry.get("interface") or {}),
                    service=svc_name,
                    ident=ident,
                    on_release=str(entry.get("on_release", "reset")),
                )
            )
        svc = Service(
            ident=ident,
            name=svc_name,
            host=host,
            pid=int(reg.pid),
            version=str(reg.version),
            devices=[d.name for d in parsed],
        )
        return svc, parsed

    def _forget_devices(self, svc: Service, keep: set[str]) -> list[Device]:
        """Devices a re-registering service no longer lists: offline from now on."""
        dropped = []
        for name in svc.devices:
            dev = self.devices.get(name)
            if dev is not None and dev.ident == svc.ident and name not in keep:
                dev.service_alive, dev.lost_at = False, time.monotonic()
                dropped.append(dev)
        return dropped

    def forget(self, svc: Service, keep: set[str]) -> None:
        """Drop a lost service's devices entirely (it never completed a session): unless a
        lease or an owed reset still names them."""
        for name in svc.devices:
            dev = self.devices.get(name)
            if (
                dev is not None
                and dev.ident == svc.ident
                and dev.lease is None
                and name not in keep
            ):
                del self.devices[name]

    def service_lost(self, ident: bytes) -> list[Device]:
        """Mark a service gone; its devices stay known but offline. Returns them."""
        svc = self.services.pop(ident, None)
        if svc is None:
            return []
        lost = []
        for name in svc.devices:
            dev = self.devices.get(name)
            if dev is not None and dev.ident == ident and dev.service_alive:
                dev.service_alive, dev.lost_at = False, time.monotonic()
                lost.append(dev)
        return lost

    def removable(self, name: str) -> Device:
        """The device ``name`` if it may be forgotten: its service is gone and no lease holds
        it. DeviceNotFound, or DeviceBusy saying why not (``details: {device, reason}``)."""
        dev = self.devices.get(name)
        if dev is None:
            raise DeviceNotFound(f"no device named {name!r}", {"device": name})
        if dev.service_alive:
            raise DeviceBusy(
                f"{name!r} is registered by service {dev.service!r}, which is connected: stop "
                "it or drop the device from its config first",
                {"device": name, "reason": "online"},
            )
        if dev.lease is not None:
            raise DeviceBusy(
                f"{name!r} is leased: release the lease (or force it) before removing it",
                {"device": name, "reason": "leased"},
            )
        return dev

    def offline_longer_than(self, seconds: float) -> list[Device]:
        """Devices whose service has been gone more than ``seconds`` and that no lease holds."""
        before = time.monotonic() - seconds
        return [
            d
            for d in self.devices.values()
            if not d.service_alive and d.lease is None and d.lost_at < before
        ]

    def query(self, selector: Selector) -> list[Device]:
        match = selector.matches
        return [d for d in self.devices.values() if match(d.labels)]


def _check_interface(name: str, interface: Any) -> None:
    """``{methods: {name: {...}}, streams: {name: {...}}}``: what requests look up."""
    if not isinstance(interface, dict):
        raise ProtocolError(f"device {name!r}: interface must be a map")
    for part in ("methods", "streams"):
        table = interface.get(part, {})
        if not isinstance(table, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) for k, v in table.items()
        ):
            raise ProtocolError(f"device {name!r}: interface {part} must map names to maps")
