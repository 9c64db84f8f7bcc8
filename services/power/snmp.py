"""Power outlets switched over SNMP v1, v2c and v3 (APC, Raritan, or any OID you name).

Each outlet of a PDU is its own driver instance, but instances with the same agent and
credentials share one pysnmp engine, all on one process-wide asyncio loop thread
(:mod:`labctl.services.bridges.asyncio_thread`): pysnmp 7 is asyncio-only. MIBs are never
loaded (``lookupMib=False``); every OID is numeric, so no MIB files are needed on the host.

What may go wrong, and how it is reported (one-line :class:`DriverError`):

- v1/v2c with a wrong community, and v3 with a wrong privacy key: the agent stays
  silent, so all we see is a timeout; the message says so and lists those causes. When
  nothing listens on the port at all (ICMP port unreachable), the message says that.
- v3 with a wrong auth key, unknown user, or a security level the user lacks: the agent
  answers with a report, named in the message.
- A read-only community or user on ``on``/``off``: ``noAccess``/``notWritable``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import structlog
import trio
from pydantic import field_validator, model_validator
from pysnmp.hlapi.v3arch import asyncio as hlapi
from pysnmp.proto import rfc1902, rfc1905

from labctl.errors import DriverError

from ..bridges.asyncio_thread import shared_loop
from ..driver import DriverConfig
from .interface import PowerDriver
from .snmp_templates import TEMPLATES, OutletTemplate

log = structlog.get_logger(__name__)

AUTH_PROTOCOLS: dict[str, Any] = {
    "none": hlapi.usmNoAuthProtocol,
    "MD5": hlapi.usmHMACMD5AuthProtocol,
    "SHA": hlapi.usmHMACSHAAuthProtocol,
    "SHA-224": hlapi.usmHMAC128SHA224AuthProtocol,
    "SHA-256": hlapi.usmHMAC192SHA256AuthProtocol,
    "SHA-384": hlapi.usmHMAC256SHA384AuthProtocol,
    "SHA-512": hlapi.usmHMAC384SHA512AuthProtocol,
}
PRIV_PROTOCOLS: dict[str, Any] = {
    "none": hlapi.usmNoPrivProtocol,
    "DES": hlapi.usmDESPrivProtocol,
    "AES": hlapi.usmAesCfb128Protocol,
}
_ALIASES = {"SHA1": "SHA", "SHA224": "SHA-224", "SHA256": "SHA-256", "SHA384": "SHA-384",
            "SHA512": "SHA-512", "AES128": "AES", "AES-128": "AES", "NONE": "none"}  # fmt: skip


class SnmpConfig(DriverConfig):
    """One outlet: where the agent is, how to log in, and which OID switches it."""

    host: str
    port: int = 161
    version: Literal["1", "2c", "3"] = "2c"
    community: str = "private"
    # SNMPv3 (USM)
    user: str | None = None
    auth_protocol: str = "none"
    auth_key: str | None = None
    priv_protocol: str = "none"
    priv_key: str | None = None
    context: str = ""
    # which OID: a named template, or model "generic" with your own OIDs and values
    model: Literal["apc", "apc_masterswitch", "raritan", "raritan_px1", "generic"]
    outlet: int | None = None
    pdu_id: int = 1
    oid: str | None = None
    on_value: int | str = 1
    off_value: int | str = 0
    state_oid: str | None = None
    state_on_value: int | str | None = None
    state_off_value: int | str | None = None
    # timing
    timeout: float = 1.0
    retries: int = 1
    poll_interval: float = 0.0

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, v: Any) -> Any:
        return str(v).lower().removeprefix("v") if isinstance(v, int | str) else v

    @field_validator("auth_protocol", "priv_protocol", mode="before")
    @classmethod
    def _protocol(cls, v: Any) -> Any:
        if v is None:
            return "none"
        key = str(v).upper().replace("_", "-")
        return _ALIASES.get(key.replace("-", ""), _ALIASES.get(key, key))

    @model_validator(mode="after")
    def _check(self) -> SnmpConfig:
        if self.auth_protocol not in AUTH_PROTOCOLS:
            raise ValueError(f"auth_protocol must be one of {', '.join(AUTH_PROTOCOLS)}")
        if self.priv_protocol not in PRIV_PROTOCOLS:
            raise ValueError(f"priv_protocol must be one of {', '.join(PRIV_PROTOCOLS)}")
        if self.version == "3":
            if not self.user:
                raise ValueError("version 3 needs 'user'")
            if self.priv_protocol != "none" and self.auth_protocol == "none":
                raise ValueError("SNMPv3 privacy needs an auth_protocol too")
            for proto, key, name in ((self.auth_protocol, self.auth_key, "auth_key"),
                                     (self.priv_protocol, self.priv_key, "priv_key")):  # fmt: skip
                if proto != "none" and (key is None or len(key) < 8):
                    raise ValueError(f"{name} must be at least 8 characters for {proto}")
        if self.model == "generic":
            if not self.oid:
                raise ValueError("model 'generic' needs 'oid' (use {outlet} for the outlet)")
        elif self.oid or self.state_oid:
            raise ValueError(f"'oid'/'state_oid' only apply to model 'generic', not {self.model!r}")
        uses_outlet = self.model != "generic" or "{outlet}" in (self.oid or "") + (
            self.state_oid or ""
        )
        if uses_outlet and self.outlet is None:
            raise ValueError(f"model {self.model!r} needs 'outlet'")
        if self.timeout <= 0 or self.retries < 0 or self.poll_interval < 0:
            raise ValueError("timeout must be > 0, retries and poll_interval >= 0")
        return self

    def template(self) -> OutletTemplate:
        """The concrete OIDs and values for this outlet."""
        if self.model == "generic":
            assert self.oid is not None
            tpl = OutletTemplate(
                set_oid=self.oid,
                on_value=self.on_value,
                off_value=self.off_value,
                state_oid=self.state_oid or self.oid,
                state_on=self.on_value if self.state_on_value is None else self.state_on_value,
                state_off=self.off_value if self.state_off_value is None else self.state_off_value,
            )
        else:
            tpl = TEMPLATES[self.model]
        return tpl.substitute(outlet=self.outlet, pdu=self.pdu_id)

    def credentials(self) -> tuple[Any, ...]:
        """What distinguishes one pysnmp engine from another (hashable)."""
        if self.version == "3":
            return ("3", self.user, self.auth_protocol, self.auth_key, self.priv_protocol,
                    self.priv_key)  # fmt: skip
        return (self.version, self.community)


@dataclasses.dataclass
class _Answer:
    """A pysnmp result turned into plain values before it leaves the asyncio thread."""

    indication: str | None = None  # pysnmp errorIndication class name
    indication_text: str = ""
    status: str | None = None  # errorStatus name, e.g. "noAccess"
    value: int | str | None = None
    missing: bool = False  # noSuchObject / noSuchInstance / endOfMibView


class _Engines:
    """pysnmp engines and transports by credentials; touched only inside the loop thread."""

    def __init__(self) -> None:
        self.engines: dict[tuple[Any, ...], hlapi.SnmpEngine] = {}
        self.targets: dict[tuple[Any, ...], hlapi.UdpTransportTarget] = {}

    async def request(self, cfg: SnmpConfig, oid: str, value: int | str | None) -> _Answer:
        engine = self.engines.get(cfg.credentials())
        if engine is None:
            engine = self.engines[cfg.credentials()] = hlapi.SnmpEngine()
        tkey = (cfg.host, cfg.port, cfg.timeout, cfg.retries)
        target = self.targets.get(tkey)
        if target is None:
            try:
                target = await hlapi.UdpTransportTarget.create(
                    (cfg.host, cfg.port), timeout=cfg.timeout, retries=cfg.retries
                )
            except Exception:  # pysnmp wraps the resolver's error in a long PySnmpError
                return _Answer(indication="BadAddress")
            self.targets[tkey] = target
        if cfg.version == "3":
            auth: Any = hlapi.UsmUserData(
                cfg.user,
                authKey=cfg.auth_key if cfg.auth_protocol != "none" else None,
                privKey=cfg.priv_key if cfg.priv_protocol != "none" else None,
                authProtocol=AUTH_PROTOCOLS[cfg.auth_protocol],
                privProtocol=PRIV_PROTOCOLS[cfg.priv_protocol],
            )
        else:
            auth = hlapi.CommunityData(cfg.community, mpModel=0 if cfg.version == "1" else 1)
        context = hlapi.ContextData(contextName=cfg.context)
        if value is None:
            vb = hlapi.ObjectType(hlapi.ObjectIdentity(oid))
            cmd = hlapi.get_cmd
        else:
            typed = rfc1902.Integer(value) if isinstance(value, int) else rfc1902.OctetString(value)
            vb = hlapi.ObjectType(hlapi.ObjectIdentity(oid), typed)
            cmd = hlapi.set_cmd
        indication, status, _index, var_binds = await cmd(
            engine, auth, target, context, vb, lookupMib=False
        )
        if indication:
            return _Answer(indication=type(indication).__name__, indication_text=str(indication))
        if status:
            return _Answer(status=status.prettyPrint())
        got = var_binds[0][1]
        if isinstance(got, rfc1905.NoSuchObject | rfc1905.NoSuchInstance | rfc1905.EndOfMibView):
            return _Answer(missing=True)
        if isinstance(got, rfc1902.OctetString):
            return _Answer(value=got.prettyPrint())
        try:
            return _Answer(value=int(got))
        except (TypeError, ValueError):
            return _Answer(value=got.prettyPrint())

    async def close(self) -> None:
        for engine in self.engines.values():
            engine.close_dispatcher()
        self.engines.clear()
        self.targets.clear()


_LOOP = shared_loop()
_ENGINES = _Engines()
_LOOP.on_stop(_ENGINES.close)


class SnmpPower(PowerDriver):
    """One PDU outlet over SNMP; optional polling reports changes made outside labctl."""

    Config = SnmpConfig
    config: SnmpConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tpl = self.config.template()
        self._online: bool | None = None

    @property
    def _where(self) -> str:
        return f"{self.name}: SNMP agent {self.config.host}:{self.config.port}"

    async def start(self, nursery: trio.Nursery) -> None:
        if self.config.poll_interval > 0:
            nursery.start_soon(self._poll)  # the first poll publishes the state
        else:
            nursery.start_soon(self._check_until_reachable)

    async def set_power(self, on: bool) -> None:
        value = self._tpl.on_value if on else self._tpl.off_value
        await self._call(self._tpl.set_oid, value)

    async def get_power(self) -> bool:
        got = await self._call(self._tpl.state_oid, None)
        if got == self._tpl.state_on:
            return True
        if got == self._tpl.state_off:
            return False
        raise DriverError(
            f"{self._where} returned {got!r} for {self._tpl.state_oid}, expected "
            f"{self._tpl.state_on!r} (on) or {self._tpl.state_off!r} (off)"
        )

    async def _poll(self) -> None:
        """Read the state every ``poll_interval``; errors mark the device offline, never end the loop."""
        while True:
            await self._check()
            await trio.sleep(self.config.poll_interval)

    async def _check_until_reachable(self) -> None:
        """Without polling: check once at start, and again while unreachable (1 s, doubling to 30 s).

        So a host that does not resolve or an agent that does not answer is listed offline
        with the reason before anyone calls, and online again once it answers.
        """
        delay = 1.0
        while not await self._check():
            await trio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _check(self) -> bool:
        """Read the state (resolving the host first); mark the device online or offline by it."""
        switches = self._switches
        try:
            on = await self.get_power()
        except Exception as exc:  # a check must outlive every failure
            self._set_online(False, str(exc))
            return False
        self._set_online(True, "")
        if switches == self._switches:  # a switch meanwhile makes this reading stale
            self.observed(on)
        return True

    def _set_online(self, online: bool, reason: str) -> None:
        if online != self._online:
            self._online = online
            if not online:
                log.warning("snmp outlet unreachable", device=self.name, reason=reason)
            self.ctx.set_online(online, reason)

    async def _call(self, oid: str, value: int | str | None) -> int | str | None:
        """One GET (``value is None``) or SET, with every failure turned into a DriverError."""
        cfg = self.config
        budget = cfg.timeout * (cfg.retries + 1) + 2.0  # pysnmp enforces the real timeout
        try:
            with trio.fail_after(budget):
                answer = await _LOOP.run(lambda: _ENGINES.request(cfg, oid, value))
        except trio.TooSlowError:
            raise DriverError(f"{self._where} did not answer within {budget:.1f}s") from None
        except Exception as exc:  # pysnmp raises plain exceptions for bad OIDs, DNS, ...
            raise DriverError(f"{self._where}: SNMP request failed: {exc}") from exc
        if answer.indication:
            raise await self._indication_error(answer)
        if answer.status:
            raise self._status_error(answer.status, oid, value)
        if answer.missing:
            raise DriverError(f"{self._where} has no object {oid} (wrong model, outlet or pdu_id?)")
        self._set_online(True, "")  # a good answer proves the agent reachable again
        return answer.value

    async def _indication_error(self, answer: _Answer) -> DriverError:
        cfg = self.config
        kind = answer.indication
        who = f"user {cfg.user!r}"
        if kind == "RequestTimedOut":
            if await _nothing_listens(cfg.host, cfg.port):
                return DriverError(f"{self._where} refused the request (nothing listens there)")
            if cfg.version != "3":
                why = f"agent down, or community {cfg.community!r} not accepted"
            elif cfg.priv_protocol != "none":
                why = f"agent down, or wrong priv_key/priv_protocol for {who}"
            else:
                why = "agent down or unreachable"
            tries = cfg.retries + 1
            return DriverError(
                f"{self._where} did not answer (timeout {cfg.timeout}s x {tries} tries; {why})"
            )
        if kind == "BadAddress":
            return DriverError(f"{self.name}: host {cfg.host} does not resolve")
        if kind in ("WrongDigest", "AuthenticationFailure", "AuthenticationError"):
            return DriverError(
                f"{self._where}: authentication failure for {who} (wrong auth_key or auth_protocol)"
            )
        if kind in ("UnknownUserName", "UnknownSecurityName"):
            return DriverError(f"{self._where} does not know SNMPv3 {who}")
        if kind == "UnsupportedSecurityLevel":
            return DriverError(f"{self._where} does not allow this security level for {who}")
        if "Ciphering services not available" in answer.indication_text:
            return DriverError(f"{self._where}: SNMPv3 privacy needs the 'cryptography' package")
        return DriverError(f"{self._where}: {answer.indication_text}")

    def _status_error(self, status: str, oid: str, value: int | str | None) -> DriverError:
        cfg = self.config
        who = f"user {cfg.user!r}" if cfg.version == "3" else f"community {cfg.community!r}"
        if status in ("noAccess", "notWritable", "readOnly", "authorizationError"):
            action = "write" if value is not None else "read"
            return DriverError(f"{self._where}: {who} may not {action} {oid} ({status})")
        if status == "noSuchName":
            return DriverError(f"{self._where} has no object {oid} (wrong model or outlet?)")
        if status in ("wrongValue", "badValue", "wrongType", "inconsistentValue"):
            return DriverError(f"{self._where} refused value {value!r} for {oid} ({status})")
        return DriverError(f"{self._where} answered {status} for {oid}")


async def _nothing_listens(host: str, port: int) -> bool:
    """True if an empty UDP datagram to ``host:port`` draws an ICMP port-unreachable.

    Tells "no agent at all" apart from "agent ignores us" after a timeout; a firewall
    that drops ICMP makes this answer False, which only loses the hint.
    """
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sock:
        try:
            with trio.move_on_after(0.2):
                await sock.connect((host, port))
                await sock.send(b"")
                await sock.recv(1)
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
    return False
