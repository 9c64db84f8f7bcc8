"""Access policy: who may use a device for what (PROTOCOL.md §8 "Access", §12 "Roles").

Two rules, asked by every handler:

- **Roles** (``POLICY``, one table): what each role (``admin``, ``user``, ``service``,
  ``viewer``: the key's entry in ``authorized_keys``, DESIGN §12) may do at all. A refusal is
  ``not-allowed`` (``NotAllowed``, details ``{identity, role, action}``) and an audit row (who,
  what, why), rate-bounded so refusals cannot flood the journal. With CurveZMQ off every
  peer is ``admin``: nothing is refused.
- **Leases** (``LeaseAccess``): mutating methods and write streams need the device's lease;
  read-only methods and read streams need none. A device in maintenance is refused to everyone
  unless the request is forced with a reason (``force``, admin-only), journaled with the
  caller's identity.
"""

from __future__ import annotations

import fnmatch
import hashlib
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import structlog

from labctl.errors import (
    BadRequest,
    DeviceBusy,
    InMaintenance,
    LeaseNotFound,
    LeaseRequired,
    NotAllowed,
)

if TYPE_CHECKING:
    from .leases import Lease
    from .peers import Peers
    from .registry import Device

log = structlog.get_logger("access")

ADMIN = frozenset({"admin"})
LEASING = frozenset({"admin", "user"})
LOOKING = frozenset({"admin", "user", "viewer"})
ANYONE = frozenset({"admin", "user", "viewer", "service"})
SERVING = frozenset({"admin", "service"})

#: action -> (roles allowed, what the action is, for the refusal's one line). Broker calls are
#: actions by their name; the rest are named here. Nothing else decides who may do what.
POLICY: dict[str, tuple[frozenset[str], str]] = {
    # looking: every role (a service may list what it serves)
    "hello": (ANYONE, "ask the broker's settings"),
    "devices": (ANYONE, "list devices"),
    "device": (ANYONE, "show a device"),
    "events": (ANYONE, "read the event journal"),
    "sync": (ANYONE, "subscribe to events"),
    "audit": (ANYONE, "read the audit journal"),
    "lease.list": (ANYONE, "list leases"),
    "lease.show": (ANYONE, "show a lease"),
    # viewers list and tail: read-only methods and read streams
    "method": (LOOKING, "call a read-only method"),
    "stream": (LOOKING, "read a stream"),
    # users lease and act on what they lease (the lease rule, below, says what is theirs)
    "lease.acquire": (LEASING, "take a lease"),
    "lease.release": (LEASING, "release a lease"),
    "lease.extend": (LEASING, "extend a lease"),
    "lease.keepalive": (LEASING, "keep a lease alive"),
    "method.mutating": (LEASING, "call a mutating method"),
    "stream.write": (LEASING, "write to a stream"),
    # admins: everything else
    "lease.release.force": (ADMIN, "force-release a lease"),
    "health": (ADMIN, "set a device's health (maintenance, bad, good)"),
    "device.remove": (ADMIN, "remove a device"),
    "force": (ADMIN, "use a device in maintenance"),
    # services register only the names their key allows (``devices`` globs; admin: any)
    "register": (SERVING, "register devices"),
    "publish": (SERVING, "publish device events"),
}


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
        action skips the lease rule (the device cannot be leased) and is journaled. Whether
        the caller may force at all is ``Roles`` (``force``: admin) and asked first.
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


class Roles:
    """Asks ``POLICY`` for a connection's role; refuses with ``NotAllowed`` and journals it.

    ``enforced`` is False while CurveZMQ is off (every peer is ``admin``): the RPC path tests
    it before calling ``check`` (a plain attribute: no call per request).
    """

    def __init__(self, peers: Peers, journal: Callable[[str, str, str, str], None]) -> None:
        self.peers = peers
        self.refusals = RefusalJournal(journal)
        self.enforced = peers.keys is not None  # the broker runs CURVE or open for its life

    def check(self, ident: bytes, action: str, target: str = "") -> None:
        """Raise ``NotAllowed`` unless this connection's role may do ``action``."""
        if self.peers.keys is None:
            return
        role = self.peers.role(ident)
        allowed = POLICY.get(action, (ADMIN, action))[0]  # an action not in the table: admin
        if role not in allowed:
            names = sorted(allowed)
            needs = (
                f"{names[0]} only" if len(names) == 1 else "needs the role " + " or ".join(names)
            )
            self.refuse(ident, role, action, target, needs)

    def check_register(
        self, ident: bytes, names: Iterable[str], devices: Mapping[str, Device]
    ) -> None:
        """A service registers only names matching its key's ``devices`` globs (an admin
        key: any name); the first name outside them refuses the whole registration. A name
        under a lease stays with the identity that registered it: a device cannot change
        hands (and a service see its holder's calls) while someone holds it."""
        if self.peers.keys is None:
            return
        self.check(ident, "register")
        entry = self.peers.entry(ident)
        if entry is None or entry.role == "admin":
            return
        globs = [str(g) for g in entry.devices or ()]
        for name in names:
            if not any(fnmatch.fnmatchcase(name, g) for g in globs):
                allowed = ", ".join(globs) or "no devices"
                self.refuse(ident, entry.role, "register", name,
                            f"its key allows only {allowed}", device=name)  # fmt: skip
            held = devices.get(name)
            if held is not None and held.lease is not None and held.owner != entry.identity:
                self.refuse(ident, entry.role, "register", name,
                            f"it is leased, and registered by {held.owner or 'another service'}",
                            device=name)  # fmt: skip

    def not_allowed_names(self, ident: bytes, names: Iterable[str]) -> list[str]:
        """The names this connection's key does not (any more) allow it to register."""
        if self.peers.keys is None:
            return []
        entry = self.peers.entry(ident)
        if entry is None:
            return list(names)
        if entry.role == "admin":
            return []
        globs = [str(g) for g in entry.devices or ()]
        return [n for n in names if not any(fnmatch.fnmatchcase(n, g) for g in globs)]

    def refuse(
        self, ident: bytes, role: str, action: str, target: str, why: str, **details: Any
    ) -> None:
        identity = self.peers.identity(ident)
        if role == "none":
            why = "the key is no longer in authorized_keys"
        on = f" {target!r}" if target else ""
        what = POLICY.get(action, (ADMIN, action))[1]
        message = f"{identity} ({role}) may not {what}{on}: {why}"
        self.refusals.record(identity, action, target, message)
        raise NotAllowed(message, {"identity": identity, "role": role, "action": action,
                                   **details})  # fmt: skip


class RefusalJournal:
    """Audit rows for refusals, bounded: one row per (identity, action) per ``PER_KEY``
    seconds, and at most ``RATE`` rows a second in all (``BURST`` at once). What is left
    out is counted and said in that key's next row (``+N more not journaled``)."""

    PER_KEY = 1.0
    RATE = 20.0
    BURST = 100.0

    def __init__(
        self,
        journal: Callable[[str, str, str, str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.journal = journal  # (who, action, target, why) -> an audit row
        self.clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._quiet: dict[tuple[str, str], int] = {}
        self._tokens = self.BURST
        self._at = clock()
        self.refused = 0  # refusals since start (journaled or not)

    def record(self, identity: str, action: str, target: str, message: str) -> None:
        self.refused += 1
        now = self.clock()
        self._tokens = min(self.BURST, self._tokens + (now - self._at) * self.RATE)
        self._at = now
        key = (identity, action)
        if now - self._last.get(key, -1e9) < self.PER_KEY or self._tokens < 1:
            self._quiet[key] = self._quiet.get(key, 0) + 1
            return
        if len(self._last) > 10_000:  # identities come from authorized_keys: rarely reached
            self._last.clear()
            self._quiet.clear()
        self._tokens -= 1
        self._last[key] = now
        quiet = self._quiet.pop(key, 0)
        why = message + (f" (+{quiet} more not journaled)" if quiet else "")
        log.warning("refused", identity=identity, action=action, target=target, not_logged=quiet)
        self.journal(identity, "not-allowed", target or action, why)
