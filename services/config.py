"""Service config files and lab files, validated so a mistake names the file, field and why."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from labctl.errors import ConfigError

DEFAULT_BROKER = "tcp://127.0.0.1:5550"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*\Z"
#: The config of models with NAME_PATTERN fields: the pattern is checked with Python's ``re``
#: (loaded anyway); pydantic's default Rust regex engine adds 0.3 MB to every service process
#: (DESIGN §13: an idle service's memory). ``\Z``, not ``$``: ``$`` also matches before a
#: trailing newline in Python.
NAMED = ConfigDict(extra="forbid", regex_engine="python-re")


class DeviceEntry(BaseModel):
    model_config = NAMED
    name: str = Field(pattern=NAME_PATTERN)
    labels: dict[str, str] = {}
    config: dict[str, Any] = {}
    on_release: Literal["reset", "keep"] = "reset"

    @field_validator("labels", mode="before")
    @classmethod
    def _stringify(cls, v: Any) -> Any:
        return {str(k): str(x) for k, x in v.items()} if isinstance(v, dict) else v


class ServiceConfig(BaseModel):
    model_config = NAMED
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
    # CURVE (docs/security.md): this service's .key_secret and the broker's public key
    # (Z85 or a .key path), paths relative to the config file; else LABCTL_KEY/_BROKER_KEY
    key: str | None = None
    broker_key: str | None = None

    @field_validator("labels", mode="before")
    @classmethod
    def _stringify(cls, v: Any) -> Any:
        return {str(k): str(x) for k, x in v.items()} if isinstance(v, dict) else v

    def client_keys(self, source: str) -> Any:
        """The CURVE keys to dial with (``labctl.keys.ClientKeys``), or None to run open;
        ConfigError naming ``source`` if a key is missing or unreadable."""
        from labctl.keys import client_keys

        base = Path(source).parent
        key = self.key
        if key is None and (base / f"{self.service}.key_secret").exists():
            key = f"{self.service}.key_secret"  # the service's own key, beside its config
        try:
            return client_keys(self.broker_key, key, base)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc.message}") from None

    def device_entries(self) -> list[DeviceEntry]:
        """The devices to register: the list, or one device named by `name` or `service`."""
        if self.devices:
            return self.devices
        return [DeviceEntry(name=self.name or self.service, on_release=self.on_release)]

    def broker_address(self) -> str:
        from labctl.client import broker_address

        return broker_address(self.broker)


class BrokerSection(BaseModel):
    """A lab file's ``broker:`` mapping: the options of ``labctl broker run``."""

    model_config = ConfigDict(extra="forbid")
    bus: str = DEFAULT_BROKER
    events: str = "tcp://127.0.0.1:5551"
    events_public: str | None = None
    state: str | None = None
    heartbeat: float = Field(default=2.0, gt=0)
    lease_grace: str | float = "60s"
    group_label: str = "dut"
    dashboard: str | None = None
    forget_offline_after: str | float | None = None
    # docs/security.md: CURVE on loopback too; no keys beyond loopback; who may connect
    curve: bool = False
    insecure: bool = False
    authorized_keys: str | None = None

    @field_validator("lease_grace", "forget_offline_after")
    @classmethod
    def _duration(cls, v: str | float | None) -> str | float | None:
        from labctl.durations import parse_duration
        from labctl.errors import LabError

        if v is None:
            return v
        try:
            parse_duration(v)
        except LabError as exc:
            raise ValueError(exc.message) from None
        return v


class SimulatorEntry(BaseModel):
    """A lab file's ``simulators[i]``: a process started (and restarted) beside the lab."""

    model_config = NAMED
    name: str = Field(pattern=NAME_PATTERN)
    command: list[str] = Field(min_length=1)

    @field_validator("command", mode="before")
    @classmethod
    def _stringify(cls, v: Any) -> Any:
        return [str(x) for x in v] if isinstance(v, list) else v


def _message(e: Any) -> str:
    """pydantic's message for one error, in words a lab-file author reads, with the value."""
    if e["type"] == "extra_forbidden":
        return "unknown field (check the spelling)"
    if e["type"] == "missing":
        return "required field missing"
    if e["type"] == "string_pattern_mismatch" and e.get("ctx", {}).get("pattern") == NAME_PATTERN:
        msg = "must be letters, digits and -_. (starting with a letter or digit)"
    else:
        msg = str(e["msg"]).removeprefix("Value error, ")
        for theirs, ours in (("Input should be ", "must be "), ("String should ", "must "),
                             ("Value should ", "must "), ("List should ", "must ")):  # fmt: skip
            msg = msg.replace(theirs, ours)
    if "input" in e and not isinstance(e["input"], (dict, list)):
        shown = repr(e["input"])
        msg += f" (got {shown[:40] + '…' if len(shown) > 40 else shown})"
    return msg


def describe_validation(source: str, exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in exc.errors():
        where = prefix + ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"{source}: {where}: {_message(e)}")
    return "\n".join(lines)


def parse_model(model: type[BaseModel], data: Any, source: str) -> Any:
    """``model`` validated from ``data``; a ConfigError naming ``source`` and each field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: must be a mapping, not {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation(source, exc)) from None


def check_driver_config(cfg: ServiceConfig, source: str, cls: Any = None) -> None:
    """Load ``cfg``'s driver and validate every device's config against the driver's Config.

    ``cls``: the driver class when the caller has it already. A field wrong in the
    service-level ``config`` is blamed on the service, one given in a
    device's own ``config`` on that device, so the message points at the line to fix.
    """
    from labctl.services.catalog import load_driver

    try:
        cls = cls or load_driver(cfg.kind, cfg.driver)
    except ConfigError as exc:
        raise ConfigError(f"{source}: driver: {exc.message}") from None
    errors: list[str] = []
    for i, entry in enumerate(cfg.device_entries()):
        try:
            cls.Config.model_validate({**cfg.config, **entry.config})
        except ValidationError as exc:
            for e in exc.errors():
                field = str(e["loc"][0]) if e["loc"] else ""
                own = cfg.devices and field in entry.config  # else the service's (or missing)
                where = f"{source}: devices[{i}] ({entry.name})" if own else source
                path = ".".join(str(p) for p in e["loc"])
                line = f"{where}: config{'.' + path if path else ''}: {_message(e)}"
                if line not in errors:  # a service-level mistake shows once, not per device
                    errors.append(line)
    if errors:
        raise ConfigError("\n".join(errors))


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
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None


def load_service_config(path: Path) -> ServiceConfig:
    return parse_service_config(load_yaml(path), str(path))
