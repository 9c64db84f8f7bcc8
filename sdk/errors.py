"""Typed errors shared by every part of labctl.

Each error has a wire ``code``; the broker and services send ``(code, message, details)``
and the SDK raises the class registered for that code, so callers can catch
``DeviceNotFound`` instead of parsing strings.
"""

from __future__ import annotations

from typing import Any, ClassVar


class LabError(Exception):
    """Base of every labctl error; ``code`` is what travels on the wire."""

    code: ClassVar[str] = "internal"
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def __str__(self) -> str:
        return self.message


class ProtocolError(LabError):
    """A frame broke the wire protocol (bad tag, version, header or size)."""

    code = "protocol"


class VersionMismatch(ProtocolError):
    """The peer speaks another protocol version."""

    code = "version"


class BadRequest(LabError):
    """A request was well-formed on the wire but asked for nonsense."""

    code = "bad-request"
    exit_code = 2


class SelectorError(BadRequest):
    """A label query did not parse; the message points at the offending character."""

    code = "selector"


class ConfigError(LabError):
    """A config file is wrong; the message names the file, the field and why."""

    code = "config"
    exit_code = 2


class DeviceNotFound(LabError):
    code = "unknown-device"
    exit_code = 3


class MethodNotFound(LabError):
    code = "unknown-method"
    exit_code = 3


class BadArguments(LabError):
    code = "bad-arguments"
    exit_code = 2


class DeviceOffline(LabError):
    code = "device-offline"
    exit_code = 4


class DuplicateName(LabError):
    """A device name is already registered by another live service."""

    code = "duplicate-name"


class Timeout(LabError):
    """No answer before the request's deadline."""

    code = "timeout"
    exit_code = 5


class BrokerUnreachable(Timeout):
    code = "broker-unreachable"


class DriverError(LabError):
    """The hardware or its driver failed (agent down, wrong credentials, command failed)."""

    code = "driver"
    exit_code = 6


class NotSupported(DriverError):
    """The driver cannot do this (for example ``read`` on a plug without a meter)."""

    code = "not-supported"


class LeaseRequired(LabError):
    """A mutating call on a device needs a lease on it."""

    code = "lease-required"
    exit_code = 7


class DeviceBusy(LabError):
    """The device is leased by someone else; ``details['holder']`` says who."""

    code = "device-busy"
    exit_code = 7


class InMaintenance(DeviceBusy):
    """A mutating call or write stream on a device in maintenance without ``force`` and a
    reason (PROTOCOL.md §8); ``details: {device, reason}``."""

    code = "maintenance"


class LeaseNotFound(LabError):
    """The lease id is unknown, or the lease has ended."""

    code = "unknown-lease"
    exit_code = 7


class NoMatch(LabError):
    """A selector matches no device at all, so no wait could ever satisfy it."""

    code = "no-match"
    exit_code = 3


class WaitTimeout(Timeout):
    """A lease request waited in the queue until its ``wait`` ran out."""

    code = "wait-timeout"


class StreamClosed(LabError):
    """A stream ended; ``details['reason']`` says why."""

    code = "stream-closed"


class StreamRefused(LabError):
    code = "stream-refused"


class ServiceGone(LabError):
    """The service owning the device went away while the call was in flight."""

    code = "service-gone"
    exit_code = 4


class StorageFull(LabError):
    """The broker's state disk is full: it serves on, but refuses lease changes until it can
    record them again (PROTOCOL.md §4)."""

    code = "storage-full"
    exit_code = 4


class LimitExceeded(BadRequest):
    """A peer reached one of the broker's per-peer limits (pending requests, streams,
    registered devices, queued lease requests); ``details: {limit, max}``."""

    code = "limit"


class NotAllowed(LabError):
    """The caller's role (its CurveZMQ key in authorized_keys, docs/security.md) does not
    allow this; ``details: {identity, role, action}``. Every refusal is in the audit journal."""

    code = "not-allowed"
    exit_code = 7


def _all_subclasses(cls: type[LabError]) -> list[type[LabError]]:
    out: list[type[LabError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


_CLASSES: list[type[LabError]] = [LabError, *_all_subclasses(LabError)]
BY_CODE: dict[str, type[LabError]] = {c.code: c for c in _CLASSES}


def from_wire(code: str, message: str, details: dict[str, Any] | None = None) -> LabError:
    """Build the typed exception for an error reply; unknown codes become ``LabError``."""
    err = BY_CODE.get(code, LabError)(message, details)
    if err.code != code:
        err.details.setdefault("code", code)
    return err
