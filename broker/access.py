"""Access policy: who may use a device for what (PROTOCOL.md §8 "Access").

Mutating methods and write streams need the device's lease; read-only methods and read
streams need none. Roles (``admin``, ``user``, ``service``, ``viewer`` from CurveZMQ
identities, DESIGN §12) belong here, next to the lease rule.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from labctl.errors import DeviceBusy, LeaseNotFound, LeaseRequired

if TYPE_CHECKING:
    from .leases import Lease
    from .registry import Device


def ref_of(lease_id: str) -> str:
    """The public name of a lease: listings, events and the audit journal use it, so seeing
    a lease never gives the id that acts on its devices."""
    return hashlib.sha256(lease_id.encode()).hexdigest()[:12]


class LeaseAccess:
    """Checks a request's lease id against the device's lease (a read-only view of them)."""

    def __init__(self, leases: Mapping[str, Lease], group_label: str) -> None:
        self.leases = leases
        self.group_label = group_label

    def check(self, dev: Device, lease_id: Any, action: str) -> None:
        """Raise unless ``lease_id`` may do ``action`` (a mutating call, a write stream)."""
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
                    "" if lease_id is None else f"; your lease {ref_of(lease_id)} does not cover it"
                ),
                {"device": dev.name, "holder": holder},
            )
