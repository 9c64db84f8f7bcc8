"""paho-mqtt's network thread, bridged into trio: one connection, its messages as a channel.

paho runs its socket loop in a thread of its own (``loop_start``). Every paho callback
here only hands a small tuple to trio with ``TrioToken.run_sync_soon`` and returns at
once, so the paho thread never waits for trio; that rules out the deadlock measured in
``research/stack.md`` §3 (``loop_stop`` joining a thread blocked in
``trio.from_thread.run``). ``loop_stop`` itself runs in a worker thread.

Reconnecting is done here, not by paho (``reconnect_on_failure=False``): each attempt
runs ``connect()`` in a worker thread so the reason a broker cannot be reached
("Connection refused", a TLS error, "Not authorized") is kept in :attr:`MqttLink.last_error`
for the driver to report. TCP_NODELAY is set on every new socket: without it a
command/confirmation round trip costs ~44 ms of Nagle + delayed-ACK instead of ~0.6 ms.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import ssl
import uuid
from typing import Any

import paho.mqtt.client as mqtt
import structlog
import trio

log = structlog.get_logger(__name__)


@dataclasses.dataclass(frozen=True)
class MqttMessage:
    topic: str
    payload: bytes
    retain: bool


@dataclasses.dataclass(frozen=True)
class TlsOptions:
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    insecure: bool = False


class MqttLink:
    """One MQTT client connection, kept up by :meth:`run`; messages arrive on :attr:`messages`.

    Subscriptions are (re)made after every connect; :attr:`ready` is True only once the
    broker has acknowledged them, so a command published once it is ready cannot miss
    its reply. Messages are dropped (and counted) if the consumer falls 256 behind.
    """

    def __init__(
        self,
        host: str,
        port: int,
        subscriptions: list[str],
        *,
        username: str | None = None,
        password: str | None = None,
        tls: TlsOptions | None = None,
        keepalive: int = 30,
        client_id: str | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.subscriptions = subscriptions
        self.keepalive = keepalive
        self.ready = False
        self.last_error = "not connected yet"
        self.dropped = 0
        self.failures = 0  # connection attempts that failed or ended
        self._changed = trio.Event()
        self._send, self.messages = trio.open_memory_channel[MqttMessage](256)
        self._token: trio.lowlevel.TrioToken | None = None
        self._closed = False
        self._attempt_over = False
        self._attempt_error: str | None = None
        cid = client_id or f"labctl-{uuid.uuid4().hex[:12]}"
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=cid, reconnect_on_failure=False
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        if tls is not None:
            self._client.tls_set(ca_certs=tls.ca_certs, certfile=tls.certfile, keyfile=tls.keyfile)
            self._client.tls_insecure_set(tls.insecure)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    @property
    def where(self) -> str:
        return f"MQTT broker {self.host}:{self.port}"

    # -- trio side ----------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, and reconnect with backoff whenever the connection ends, until cancelled."""
        self._token = trio.lowlevel.current_trio_token()
        backoff = 0.2
        try:
            while not self._closed:
                if await self._connect_once():
                    while not (self._attempt_over or self._closed):
                        await self.wait_changed()
                    await trio.to_thread.run_sync(self._client.loop_stop)
                    if self._attempt_error is None:  # it was up: retry soon
                        backoff = 0.2
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        finally:
            with trio.CancelScope(shield=True):
                await self.aclose()

    async def _connect_once(self) -> bool:
        """One attempt; True if the TCP (and TLS) connection stands and paho's loop runs."""
        self._attempt_over = False
        self._attempt_error = None
        try:
            await trio.to_thread.run_sync(
                self._client.connect, self.host, self.port, self.keepalive
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._fail(f"cannot connect to {self.where}: {_reason(exc)}")
            return False
        sock = self._client.socket()
        if isinstance(sock, socket.socket):  # an SSLSocket is one too
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client.loop_start()
        return True

    async def wait_changed(self) -> None:
        """Wait for the next connection state change (ready, lost, failed)."""
        await self._changed.wait()

    def publish(self, topic: str, payload: str | bytes, qos: int = 0) -> None:
        """Queue a message; paho's thread sends it (publish is thread-safe and non-blocking)."""
        self._client.publish(topic, payload, qos=qos)

    async def aclose(self) -> None:
        """Disconnect and join paho's thread; safe to call twice."""
        self._closed = True
        self.ready = False
        self._notify()
        with contextlib.suppress(Exception):
            self._client.disconnect()
        await trio.to_thread.run_sync(self._client.loop_stop)
        self._send.close()

    def _fail(self, reason: str) -> None:
        self.ready = False
        self.last_error = self._attempt_error = reason
        self._attempt_over = True
        self.failures += 1
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _deliver(self, msg: MqttMessage) -> None:
        try:
            self._send.send_nowait(msg)
        except trio.WouldBlock:
            self.dropped += 1
            if self.dropped % 100 == 1:
                log.warning("mqtt consumer too slow, dropping", broker=self.where, n=self.dropped)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def _ready(self) -> None:
        self.ready = True
        self.last_error = ""
        self._notify()

    # -- paho thread side: never block, only hand over --------------------------------
    def _to_trio(self, fn: Any, *args: Any) -> None:
        if self._token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(fn, *args)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            self._to_trio(self._fail, f"{self.where} refused the connection: {rc}")
            return
        client.subscribe([(topic, 0) for topic in self.subscriptions])

    def _on_subscribe(self, _c: Any, _u: Any, _mid: Any, _rcs: Any, _p: Any) -> None:
        self._to_trio(self._ready)

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not self._closed:
            why = "connection closed" if str(rc) == "Unspecified error" else str(rc)
            self._to_trio(self._lost, f"lost the connection to {self.where} ({why})")

    def _lost(self, reason: str) -> None:
        if self._attempt_error is None:  # keep "refused: Not authorized", say why it ended
            self.last_error = reason
        self.ready = False
        self._attempt_over = True
        self.failures += 1
        self._notify()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._to_trio(self._deliver, MqttMessage(msg.topic, bytes(msg.payload), bool(msg.retain)))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
