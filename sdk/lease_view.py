"""What the sync and trio leases share: reading a lease's description from the broker."""

from __future__ import annotations

from typing import Any

from .errors import LabError


class LeaseView:
    """A granted lease's id, devices and end time, and finding a device by name or kind."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info
        self.id: str = info["id"]

    @property
    def ref(self) -> str:
        """The public name listings and events use (``lease.<ref>.ended``)."""
        return str(self.info["ref"])

    @property
    def devices(self) -> list[str]:
        return list(self.info["devices"])

    @property
    def end_time(self) -> float:
        return float(self.info["end"])

    def device_info(self, name: str) -> dict[str, Any]:
        """The kind and interface of device ``name``; LabError if the lease lacks it."""
        if name not in self.info["devices"]:
            raise LabError(f"lease {self.id} holds {', '.join(self.devices)}, not {name!r}")
        return {
            "kind": self.info["kinds"].get(name),
            "interface": self.info["interfaces"].get(name, {}),
        }

    def name_of_kind(self, kind: str) -> str:
        """The one device of ``kind``: AttributeError if none, LabError listing them if many."""
        names = sorted(n for n, k in self.info.get("kinds", {}).items() if k == kind)
        if not names:
            raise AttributeError(
                f"lease {self.id} holds no {kind!r} device (it holds {self.devices})"
            )
        if len(names) > 1:
            raise LabError(
                f"lease {self.id} holds {len(names)} {kind} devices; pick one by name: "
                + ", ".join(f"lease[{n!r}]" for n in names)
            )
        return names[0]
