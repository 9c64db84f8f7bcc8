"""One lease: what the table keeps, persists and shows (``public()`` never has the id)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .access import ref_of


@dataclass(slots=True)
class Lease:
    id: str
    holder: str
    selector: str
    devices: list[str]
    begin: float
    end: float
    grace: float
    keepalive_at: float = field(default_factory=time.monotonic)

    @property
    def ref(self) -> str:
        return ref_of(self.id)

    def public(self) -> dict[str, Any]:
        """What anyone may see: everything but the id, which is the holder's credential."""
        row = self.row()
        del row["id"]
        return {"ref": self.ref, **row}

    def row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "holder": self.holder,
            "selector": self.selector,
            "devices": self.devices,
            "begin": self.begin,
            "end": self.end,
            "grace": self.grace,
        }
