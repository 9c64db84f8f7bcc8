"""labctl: drive a hardware test lab over a ZeroMQ bus.

``from labctl import Lab`` is all a script needs; see the README for a tour.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Lab", "__version__"]

if TYPE_CHECKING:
    from .lab import Lab


def __getattr__(name: str) -> Any:
    # Imported lazily so `labctl --help` and `import labctl.errors` stay fast.
    if name == "Lab":
        from .lab import Lab

        return Lab
    raise AttributeError(name)
