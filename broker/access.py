"""Access policy: who may use a device for what (PROTOCOL.md §8 "Access").

Mutating methods and write streams need the device's lease; read-only methods and read
streams need none. A device in maintenance is refused to everyone unless the request is
forced with a reason (``force``), which is journaled with the caller's identity; any client
may force today, an ``admin`` only once roles exist. Roles (``admin``, ``user``, ``service``, ``viewer`` from CurveZMQ
identities, DESIGN §12) belong here, next to the lease rule.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from labctl.errors import BadRequest, DeviceBusy, InMaintenance, LeaseNotFound, LeaseRequired

if TYPE_CHECKING:
    from .leases import Lease
    from .registry import Device


def ref_of(lease_id: str) -> str:
    """The public name of a lease: listings, events and the audit journal use it, so seeing
    a lease never gives the id that acts on its devices."""
    return hashlib.sha256(lease_id.encode()).hexdigest()[:12]


class LeaseAccess:
    """Checks a request's lease id against the device's lease (a read-only view of them)."""

    def __init__(
        self,
        leases: Mapping[str, Lease],
        group_label: str,
        journal: Callable[[Device, str, str, str], None] | None = None,
    ) -> None:
        self.leases = leases
        self.group_label = group_label
        #: records forced use of a device in maintenance: (device, who, action, reason)
        self.journal = journal

    def check(
        self, dev: Device, lease_id: Any, action: str, force: str | None = None, who: str = ""
    ) -> None:
        """Raise unless ``lease_id`` may do ``action`` (a mutating call, a write stream).

        A device in maintenance: InMaintenance unless ``force`` gives a reason; a forced
        action skips the lease rule (the device cannot be leased) and is journaled. Roles
        make ``force`` admin-only here once they exist.
        """
        if dev.health == "maintenance":
            if not force:
                why = f" ({dev.health_reason})" if dev.health_reason else ""
                raise InMaintenance(
                    f"{action} on {dev.name!r}: the device is in maintenance{why}; an admin "
                    "debugging it may force it with --force --reason TEXT",
                    {"device": dev.name, "reason": dev.health_reason},
                )
            if self.journal is not None:
                self.journal(dev, who, action, force)
            return
        if force:
            raise BadRequest(
                f"force is for devices in maintenance; {dev.name!r} is {dev.health}: "
                "lease it instead",
                {"device": dev.name, "field": "force"},
            )
        if lease_id is not None and lease_id not in self.leases:
            raise LeaseNotFound(
                f"lease {lease_id} is not active (released, expired, or its holder went "
                "silent); take a new one",
                {"lease": lease_id},
            )
        group = dev.labels.get(self.group_label)
        selector = f"{self.group_label}={group}" if group else f"name={dev.name}"
        if dev.lease is None:
            if lease_id is not None:
                raise LeaseRequired(
                    f"{action} on {dev.name!r}: your lease {ref_of(lease_id)} does not cover it; "
                    f"lease it too (`labctl lease acquire {selector}`)",
                    {"device": dev.name},
                )
            raise LeaseRequired(
                f"{action} on {dev.name!r} needs a lease; take one with "
                f"`labctl lease acquire {selector}` or use the SDK's lab.lease()",
                {"device": dev.name},
            )
        if dev.lease != lease_id:
            lease = self.leases.get(dev.lease)
            holder = lease.holder if lease is not None else "?"
            raise DeviceBusy(
                f"{dev.name!r} is leased by {holder}"
                + (
                    "; if that lease is yours, give its id (--lease ID or LABCTL_LEASE)"
                    if lease_id is None
                    else f"; your lease {ref_of(lease_id)} does not cover it"
                ),
                {"device": dev.name, "holder": holder},
            )
