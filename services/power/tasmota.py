"""A Tasmota smart plug (or anything speaking its MQTT topics) as a power outlet.

Tasmota listens on ``cmnd/<topic>/POWER`` (``ON``, ``OFF``, or empty to ask) and answers on
``stat/<topic>/POWER``; it keeps a retained ``tele/<topic>/LWT`` at ``Online`` with a
broker-published will of ``Offline``, and sends ``tele/<topic>/SENSOR`` every TelePeriod
with an ``ENERGY`` object on metering plugs. ``on``/``off`` publish the command and wait for
the plug's ``stat`` confirmation; every ``stat`` (a button press, another controller) is
reported through :meth:`observed`, and LWT changes through ``ctx.set_online``.

What may go wrong: the broker is down or refuses our credentials (DriverError with the
broker's reason after ``timeout``), the plug is offline (no confirmation within ``timeout``;
the message says whether the LWT reports it Offline), or the plug meters nothing
(``read`` raises NotSupported).
"""

from __future__ import annotations

import json
import time
from typing import Any

import structlog
import trio
from pydantic import model_validator

from labctl.errors import DriverError, NotSupported

from ..bridges.mqtt import MqttLink, MqttMessage, TlsOptions
from ..driver import DriverConfig
from .interface import PowerDriver

log = structlog.get_logger(__name__)

#: ENERGY fields reported by ``read``: Tasmota name -> our name.
ENERGY_FIELDS = {
    "Voltage": "voltage",
    "Current": "current",
    "Power": "power",
    "ApparentPower": "apparent_power",
    "Factor": "power_factor",
    "Total": "energy_total_kwh",
}


class TasmotaConfig(DriverConfig):
    """Broker address and credentials, the plug's topic, and topic templates.

    Templates may use ``{topic}`` and ``{power}`` (``POWER``, or ``POWER<relay>`` when
    ``relay`` is set, for multi-relay devices).
    """

    host: str
    port: int = 1883
    topic: str
    relay: int | None = None
    command_topic: str = "cmnd/{topic}/{power}"
    state_topic: str = "stat/{topic}/{power}"
    lwt_topic: str = "tele/{topic}/LWT"
    sensor_topic: str = "tele/{topic}/SENSOR"
    payload_on: str = "ON"
    payload_off: str = "OFF"
    lwt_online: str = "Online"
    lwt_offline: str = "Offline"
    username: str | None = None
    password: str | None = None
    client_id: str | None = None
    tls: bool = False
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    insecure: bool = False
    keepalive: int = 30
    timeout: float = 2.0

    @model_validator(mode="after")
    def _check(self) -> TasmotaConfig:
        if self.timeout <= 0:
            raise ValueError("timeout must be > 0")
        if self.relay is not None and self.relay < 1:
            raise ValueError("relay counts from 1 (leave it out for a single-relay plug)")
        if self.password is not None and self.username is None:
            raise ValueError("password given without username")
        for name in ("command_topic", "state_topic", "lwt_topic", "sensor_topic"):
            try:
                self.topic_for(name)
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"{name}: only {{topic}} and {{power}} may be used") from exc
        return self

    def topic_for(self, name: str) -> str:
        power = "POWER" if self.relay is None else f"POWER{self.relay}"
        return str(getattr(self, name)).format(topic=self.topic, power=power)


class TasmotaPower(PowerDriver):
    """One Tasmota relay over MQTT; confirms every switch by the plug's own ``stat``."""

    Config = TasmotaConfig
    config: TasmotaConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg = self.config
        self._cmnd = cfg.topic_for("command_topic")
        self._stat = cfg.topic_for("state_topic")
        self._lwt = cfg.topic_for("lwt_topic")
        self._sensor = cfg.topic_for("sensor_topic")
        tls = None
        if cfg.tls or cfg.ca_certs or cfg.certfile:
            tls = TlsOptions(cfg.ca_certs, cfg.certfile, cfg.keyfile, cfg.insecure)
        self._link = MqttLink(
            cfg.host,
            cfg.port,
            [self._stat, self._lwt, self._sensor],
            username=cfg.username,
            password=cfg.password,
            tls=tls,
            keepalive=cfg.keepalive,
            client_id=cfg.client_id,
        )
        self._plug_online: bool | None = None
        self._offline_reason = ""
        self._stat_count = 0  # how many stat messages arrived; a waiter wants a later one
        self._stat_value: bool | None = None
        self._stat_event = trio.Event()
        self._energy: dict[str, float] | None = None
        self._energy_at = 0.0
        self._started = False

    async def start(self, nursery: trio.Nursery) -> None:
        self._started = True
        nursery.start_soon(self._link.run)
        nursery.start_soon(self._dispatch)
        nursery.start_soon(self._watch_link)

    async def close(self) -> None:
        await self._link.aclose()

    # -- primitives ---------------------------------------------------------------------
    async def set_power(self, on: bool) -> None:
        await self._command(self.config.payload_on if on else self.config.payload_off, want=on)

    async def get_power(self) -> bool:
        return await self._command("", want=None)

    async def read_power(self) -> dict[str, float]:
        if self._energy is None:
            raise NotSupported(
                f"{self.name}: no ENERGY telemetry seen on {self._sensor} "
                "(plug without a meter, or no TelePeriod message yet)"
            )
        return {**self._energy, "age_s": round(time.monotonic() - self._energy_at, 3)}

    async def _command(self, payload: str, want: bool | None) -> bool:
        """Publish a command and wait for a ``stat`` after it (with ``want`` if not None)."""
        cfg = self.config
        deadline = trio.current_time() + cfg.timeout
        if not self._started:
            raise DriverError(f"{self.name}: driver not started")
        if not self._link.ready:  # give the link one more attempt, within the timeout
            failures = self._link.failures
            with trio.move_on_at(deadline):
                while not self._link.ready and self._link.failures == failures:
                    await self._link.wait_changed()
            if not self._link.ready:
                raise DriverError(f"{self.name}: {self._link.last_error}")
        if self._plug_online is False:  # the broker said so; a command would go nowhere
            raise DriverError(f"{self.name}: plug is offline ({self._lwt} says {cfg.lwt_offline})")
        seen = self._stat_count
        self._link.publish(self._cmnd, payload)
        with trio.move_on_at(deadline):
            while True:
                await self._stat_event.wait()
                if self._stat_count > seen and (want is None or self._stat_value == want):
                    assert self._stat_value is not None
                    return self._stat_value
        asked = payload or "a state query"
        hint = "" if self._plug_online else f"; no LWT seen on {self._lwt}: wrong topic?"
        raise DriverError(
            f"{self.name}: plug did not confirm {asked} on {self._stat} within {cfg.timeout}s{hint}"
        )

    # -- background ---------------------------------------------------------------------
    async def _dispatch(self) -> None:
        """Turn MQTT messages into state, online and energy updates; bad payloads are logged."""
        async for msg in self._link.messages:
            try:
                self._handle(msg)
            except Exception as exc:  # a malformed message must not end the dispatcher
                log.warning("bad message", device=self.name, topic=msg.topic, error=str(exc))

    def _handle(self, msg: MqttMessage) -> None:
        cfg = self.config
        text = msg.payload.decode("utf-8", "replace").strip()
        if msg.topic == self._stat:
            if text.upper() in (cfg.payload_on.upper(), "1"):
                on = True
            elif text.upper() in (cfg.payload_off.upper(), "0"):
                on = False
            else:
                raise ValueError(f"unexpected state {text!r}")
            self._stat_count += 1
            self._stat_value = on
            self._stat_event.set()
            self._stat_event = trio.Event()
            self.observed(on)
        elif msg.topic == self._lwt:
            if text == cfg.lwt_online:
                if self._plug_online is not True:
                    # the plug (re)appeared, perhaps after a reboot in another state: ask
                    self._link.publish(self._cmnd, "")
                self._set_plug_online(True, "")
            elif text == cfg.lwt_offline:
                self._set_plug_online(False, f"plug reports {text} ({self._lwt})")
        elif msg.topic == self._sensor:
            energy = json.loads(text).get("ENERGY")
            if isinstance(energy, dict):
                self._energy = {
                    ours: float(energy[theirs])
                    for theirs, ours in ENERGY_FIELDS.items()
                    if isinstance(energy.get(theirs), int | float)
                }
                self._energy_at = time.monotonic()

    async def _watch_link(self) -> None:
        """Mark the device offline while the broker is unreachable, and ask for the state
        after every (re)connect so a change made while we were away is seen."""
        was_ready = False
        while True:
            ready = self._link.ready
            if ready and not was_ready:
                self._link.publish(self._cmnd, "")
            elif not ready and self._link.failures and (was_ready or self._plug_online is None):
                self._set_plug_online(False, self._link.last_error)
            was_ready = ready
            await self._link.wait_changed()

    def _set_plug_online(self, online: bool, reason: str) -> None:
        """Report changes; while offline a new reason (plug gone, then broker gone) too."""
        if online != self._plug_online or (not online and reason != self._offline_reason):
            self._plug_online = online
            self._offline_reason = "" if online else reason
            self.ctx.set_online(online, reason)
