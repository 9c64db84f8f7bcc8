"""What the sync and trio SDKs share: reading the broker's device and lease descriptions."""

from __future__ import annotations

from typing import Any

from .errors import DeviceNotFound, LabError


class DeviceInfo(dict[str, Any]):
    """One device of a listing (``lab.devices()``): typed attributes over the broker's
    public view, which stays reachable as a dict (``info["name"]``, JSON dumps) for
    scripts written against the dict."""

    __slots__ = ()

    @property
    def name(self) -> str:
        """The device's name."""
        return str(self["name"])

    @property
    def kind(self) -> str:
        """Its kind (``power``, ``serial``, ...)."""
        return str(self.get("kind") or "")

    @property
    def driver(self) -> str:
        """The driver its service runs."""
        return str(self.get("driver") or "")

    @property
    def labels(self) -> dict[str, str]:
        """Its labels (what selectors match)."""
        return dict(self.get("labels") or {})

    @property
    def online(self) -> bool:
        """Whether its service is alive and the hardware reachable."""
        return bool(self.get("online"))

    @property
    def offline_reason(self) -> str:
        """Why it is offline ("" while online)."""
        return str(self.get("offline_reason") or "")

    @property
    def health(self) -> str:
        """``good``, ``bad`` or ``maintenance``."""
        return str(self.get("health") or "")

    @property
    def health_reason(self) -> str:
        """Why it is not ``good`` ("" if it is)."""
        return str(self.get("health_reason") or "")

    @property
    def lease(self) -> str | None:
        """The public ref of the lease holding it (never the lease id), or None."""
        return self.get("lease")

    @property
    def holder(self) -> str | None:
        """Who holds the lease on it (None if free)."""
        return self.get("holder")

    @property
    def status(self) -> Any:
        """The last status its service published (kind-specific)."""
        return self.get("status")

    @property
    def service(self) -> str:
        """The service that drives it."""
        return str(self.get("service") or "")

    def __repr__(self) -> str:
        state = "online" if self.online else "offline"
        return f"<DeviceInfo {self.name} kind={self.kind} {state} health={self.health}>"


class LeaseView:
    """A granted lease's id, devices and end time, and finding a device by name or kind."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info
        self.id: str = info["id"]  # the credential: never printed (repr and errors show ref)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.ref} devices={self.devices}>"

    @property
    def ref(self) -> str:
        """The public name listings and events use (``lease.<ref>.ended``)."""
        return str(self.info["ref"])

    @property
    def devices(self) -> list[str]:
        """Names of the devices held."""
        return list(self.info["devices"])

    @property
    def end_time(self) -> float:
        """When the lease ends unless extended (epoch seconds)."""
        return float(self.info["end"])

    def device_info(self, name: str) -> dict[str, Any]:
        """The kind and interface of device ``name``; DeviceNotFound if the lease lacks it."""
        if name not in self.info["devices"]:
            raise DeviceNotFound(
                f"lease {self.ref} holds {', '.join(self.devices)}, not {name!r}",
                {"device": name, "lease": self.ref},
            )
        return {
            "kind": self.info["kinds"].get(name),
            "interface": self.info["interfaces"].get(name, {}),
        }

    def name_of_kind(self, kind: str) -> str:
        """The one device of ``kind``: AttributeError if none, LabError listing them if many."""
        names = sorted(n for n, k in self.info.get("kinds", {}).items() if k == kind)
        if not names:
            raise AttributeError(
                f"lease {self.ref} holds no {kind!r} device (it holds {self.devices})"
            )
        if len(names) > 1:
            raise LabError(
                f"lease {self.ref} holds {len(names)} {kind} devices; pick one by name: "
                + ", ".join(f"lease[{n!r}]" for n in names)
            )
        return names[0]
