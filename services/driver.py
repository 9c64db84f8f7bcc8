"""What every device driver is: a config model, exported methods, and a few hooks.

A service process creates one driver instance per device it registers. The runtime
validates the driver's ``Config`` (service-level ``config`` merged with the device's own),
calls ``start`` inside the service's nursery, dispatches RPCs to ``@export`` methods,
and calls ``reset`` when a lease on the device ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import trio
from pydantic import BaseModel, ConfigDict

from .export import exports_of


class DriverConfig(BaseModel):
    """Base of every driver's config; unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class DeviceContext:
    """What the runtime hands a driver: its name, and ways to tell the world things."""

    def __init__(
        self,
        name: str,
        publish: Callable[[str, Any], None],
        set_online: Callable[[bool, str], None],
    ) -> None:
        self.name = name
        self._publish = publish
        self._set_online = set_online

    def publish(self, topic_suffix: str, body: Any) -> None:
        """Publish an event ``device.<name>.<topic_suffix>`` through the broker."""
        self._publish(f"device.{self.name}.{topic_suffix}", body)

    def publish_status(self, status: dict[str, Any]) -> None:
        """Publish the device's status; the broker caches the last one for listings."""
        self.publish("status", status)

    def set_online(self, online: bool, reason: str = "") -> None:
        """Say whether the hardware behind the device is reachable (e.g. a plug's LWT)."""
        self._set_online(online, reason)


class Driver:
    """Base of every driver. Subclasses set ``kind``, ``Config`` and export methods."""

    kind: ClassVar[str] = ""
    Config: ClassVar[type[DriverConfig]] = DriverConfig
    #: streams the device offers: name -> {"writable": bool}
    streams: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, ctx: DeviceContext, config: DriverConfig) -> None:
        self.ctx = ctx
        self.config = config

    @property
    def name(self) -> str:
        return self.ctx.name

    async def start(self, nursery: trio.Nursery) -> None:
        """Start background work (polling, subscriptions) in the service's nursery."""

    async def reset(self) -> None:
        """Bring the device to its idle state when a lease on it ends."""

    async def close(self) -> None:
        """Release hardware handles when the service stops."""

    def interface(self) -> dict[str, Any]:
        """The method and stream table sent to the broker at registration."""
        methods = exports_of(type(self))
        return {"kind": self.kind, "methods": methods, "streams": dict(self.streams)}
