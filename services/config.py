"""Service config files (DESIGN §11), validated so a mistake names the file, field and why."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from labctl.errors import ConfigError

DEFAULT_BROKER = "tcp://127.0.0.1:5550"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"


class DeviceEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    labels: dict[str, str] = {}
    config: dict[str, Any] = {}
    on_release: Literal["reset", "keep"] = "reset"

    @field_validator("labels", mode="before")
    @classmethod
    def _stringify(cls, v: Any) -> Any:
        return {str(k): str(x) for k, x in v.items()} if isinstance(v, dict) else v


class ServiceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    service: str = Field(pattern=NAME_PATTERN)
    kind: str
    driver: str
    broker: str | None = None
    labels: dict[str, str] = {}
    config: dict[str, Any] = {}
    devices: list[DeviceEntry] = []
    # one-device services may give these at the top level instead of `devices`
    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    on_release: Literal["reset", "keep"] = "reset"
    heartbeat: float | None = Field(default=None, gt=0)

    @field_validator("labels", mode="before")
    @classmethod
    def _stringify(cls, v: Any) -> Any:
        return {str(k): str(x) for k, x in v.items()} if isinstance(v, dict) else v

    def device_entries(self) -> list[DeviceEntry]:
        """The devices to register: the list, or one device named by `name` or `service`."""
        if self.devices:
            return self.devices
        return [DeviceEntry(name=self.name or self.service, on_release=self.on_release)]

    def broker_address(self) -> str:
        return self.broker or os.environ.get("LABCTL_BROKER") or DEFAULT_BROKER


def describe_validation(source: str, exc: ValidationError) -> str:
    lines = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling)"
        lines.append(f"{source}: {where}: {msg}")
    return "\n".join(lines)


def parse_service_config(data: Any, source: str) -> ServiceConfig:
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: a service config must be a mapping, not {type(data).__name__}"
        )
    try:
        return ServiceConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation(source, exc)) from None


def load_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def load_service_config(path: Path) -> ServiceConfig:
    return parse_service_config(load_yaml(path), str(path))
