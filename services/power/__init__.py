"""The ``power`` device kind: one interface, several drivers."""

from .interface import PowerDriver

__all__ = ["PowerDriver"]
