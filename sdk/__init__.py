"""labctl: drive a hardware test lab over a ZeroMQ bus.

``from labctl import Lab`` is all a script needs; see the README for a tour.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["AsyncLab", "DeviceInfo", "Lab", "LabError", "__version__"]

if TYPE_CHECKING:
    from .aio import AsyncLab
    from .errors import LabError
    from .lab import Lab
    from .lease_view import DeviceInfo

# Imported lazily so `labctl --help` and `import labctl.errors` stay fast.
_LAZY = {
    "Lab": "labctl.lab",
    "AsyncLab": "labctl.aio",
    "DeviceInfo": "labctl.lease_view",
    "LabError": "labctl.errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'labctl' has no attribute {name!r}")


def __dir__() -> list[str]:
    """What ``dir(labctl)`` and completion show: the lazy names too."""
    return sorted({*globals(), *_LAZY})
