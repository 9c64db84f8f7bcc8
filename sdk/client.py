"""The sync SDK's transport: one blocking DEALER, no event loop, no thread per call.

A blocking pyzmq round trip costs ~50 µs here, an event-loop hop several times that, so
the sync API talks to the socket directly. One ``BusClient`` is not thread
safe; the lease keepalive thread uses its own.
"""

from __future__ import annotations

import getpass
import math
import os
import socket
import time
from typing import Any, Literal

import zmq

from . import core, multipart, protocol
from .errors import Timeout
from .keys import ClientKeys, client_keys, secure

DEFAULT_BROKER = "tcp://127.0.0.1:5550"
#: how long the first request waits before calling the broker unreachable
CONNECT_TIMEOUT = float(os.environ.get("LABCTL_CONNECT_TIMEOUT", "3"))


def broker_address(address: str | None = None) -> str:
    """The broker address to dial: ``address``, else ``$LABCTL_BROKER``, else the default,
    with ``HOST:PORT`` meaning tcp. ConfigError (one line, the accepted forms) otherwise."""
    if address:
        return normalize_address(address, "broker address")
    env = os.environ.get("LABCTL_BROKER")
    if env:
        return normalize_address(env, "LABCTL_BROKER")
    return DEFAULT_BROKER


_ADDRESS_FORMS = "tcp://HOST:PORT, HOST:PORT (tcp), ipc://PATH or inproc://NAME"


def normalize_address(address: str, what: str = "address") -> str:
    """``address`` as ZeroMQ takes it: ``HOST:PORT`` becomes ``tcp://HOST:PORT``; anything
    that is not one of the accepted forms raises ConfigError naming them (ZeroMQ would
    only say "Invalid argument")."""
    from .errors import ConfigError

    text = address.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "tcp", text
    ok = bool(rest)
    if scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        ok = bool(colon and host and port.isdigit() and int(port) < 65536)
        ok = ok and (not host.startswith("[") or host.endswith("]")) and " " not in host
        ok = ok and ("/" not in host) and (":" not in host or host.startswith("["))
    elif scheme not in ("ipc", "inproc"):
        ok = False
    if not ok:
        raise ConfigError(f"invalid {what} {address!r}: write {_ADDRESS_FORMS}")
    return f"{scheme}://{rest}"


def holder_identity() -> str:
    """Who a lease is held by: user@host:pid (self-asserted until CurveZMQ identities)."""
    return f"{getpass.getuser()}@{socket.gethostname()}:{os.getpid()}"


def identity_metadata() -> bytes:
    """The ZMTP property the broker takes lease holders and audit names from (PROTOCOL §7)."""
    return b"X-Labctl-User:" + holder_identity().encode()


def events_address(bus: str, advertised: str) -> str:
    """The events endpoint to dial: the advertised one, with a wildcard host replaced."""
    if advertised.startswith("tcp://"):
        host, _, port = advertised[6:].rpartition(":")
        if host in ("*", "0.0.0.0", "[::]", ""):
            bus_host = bus[6:].rpartition(":")[0] if bus.startswith("tcp://") else "127.0.0.1"
            return f"tcp://{bus_host}:{port}"
    return advertised


class RequestForgotten(Timeout):
    """A long request went unanswered past its reminders: the broker lost it (restarted)."""


class BusClient:
    def __init__(
        self,
        address: str | None = None,
        timeout: float = protocol.DEFAULT_TIMEOUT,
        keys: ClientKeys | Literal[False] | None = None,
    ) -> None:
        """``keys``: CURVE keys to dial with (default: from the environment, see
        ``labctl.keys.client_keys``, none there means open; False: open, whatever the
        environment says)."""
        self.address = broker_address(address)
        self.timeout = timeout
        self.keys = (keys or None) if keys is not None else client_keys()
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.METADATA, identity_metadata())  # who we are, per connection
        self.handshake = secure(self.sock, self.keys, self.address)
        self.sock.connect(self.address)
        self.requests = core.Requests()
        self.stream_handler: Any = None  # set by streams sharing this socket
        self._answered = False  # any reply yet? tells 'broker down' from 'call slow'
        self._rcvtimeo = -1  # the RCVTIMEO now set on the socket (ms)

    def close(self) -> None:
        self.handshake.stop()
        self.sock.close(0)

    def request(
        self,
        msg: core.Outgoing,
        timeout: float | None = None,
        progress: Any = None,
        idle: float | None = None,
    ) -> Any:
        """Send one request and wait for its reply; raise the typed error it carries.

        With ``idle``, a request that hears nothing about itself (reply or progress) for
        that long raises RequestForgotten: the broker restarted and lost it.
        """
        timeout = self.timeout if timeout is None else timeout
        rid, frames = self.requests.frames(msg, timeout)
        now = time.monotonic()
        full_deadline = now + timeout
        # until the broker has answered once, give up early: it is probably not there
        deadline = full_deadline if self._answered else min(full_deadline, now + CONNECT_TIMEOUT)
        try:
            multipart.send(self.sock, frames, multipart.NOBLOCK)
        except zmq.Again:  # no connection to queue it on (yet, or a refused one: for good)
            self._send_when_connected(frames, deadline, msg, timeout)
        heard = now
        while True:
            limit = deadline if idle is None else min(deadline, heard + idle)
            got = self._receive_until(limit) if self._answered else self._first_receive(limit)
            if got is None:
                if idle is not None and self._answered and time.monotonic() < full_deadline:
                    raise RequestForgotten(f"the broker stopped answering about request {rid}")
                waited = timeout if self._answered else CONNECT_TIMEOUT
                refused = None if self._answered else self.handshake.error()
                raise refused or core.timeout_error(self.address, msg, waited, self._answered)
            self._answered, deadline = True, full_deadline
            if got.id != rid:
                if self.stream_handler is not None:
                    self.stream_handler(got)
                continue
            if idle is not None:
                heard = time.monotonic()
            done, value = core.settle(got, progress)
            if done:
                return value

    def _send_when_connected(
        self, frames: list[Any], deadline: float, msg: Any, timeout: float
    ) -> None:
        """Send once the socket has a connection to queue on, until ``deadline``. libzmq
        does not dial again after the broker refused our key: without this a call after a
        refusal would block in send for ever."""
        while True:
            refused = self.handshake.error()
            if refused is not None:
                raise refused
            ms = math.ceil((deadline - time.monotonic()) * 1000)
            if ms <= 0:
                waited = timeout if self._answered else min(timeout, CONNECT_TIMEOUT)
                raise core.timeout_error(self.address, msg, waited, self._answered)
            if self.sock.poll(min(ms, 100), zmq.POLLOUT):
                try:
                    multipart.send(self.sock, frames, multipart.NOBLOCK)
                    return
                except zmq.Again:
                    continue

    def _first_receive(self, deadline: float) -> protocol.Message | None:
        """Before the broker's first answer: wait on the socket and on the handshake monitor
        too, so a refused key fails at once, not after the connect timeout."""
        monitor = self.handshake.monitor
        if monitor is None:
            return self._receive_until(deadline)
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        while True:
            ms = max(0, math.ceil((deadline - time.monotonic()) * 1000))
            ready = dict(poller.poll(ms))
            if self.sock in ready:
                return self._receive_until(deadline)  # a message waits: no blocking
            if monitor in ready and (refused := self.handshake.refused()) is not None:
                raise refused
            if time.monotonic() >= deadline:
                return None

    def _receive_until(self, deadline: float) -> protocol.Message | None:
        """The next message, waiting until ``deadline`` (monotonic); None after it.

        A blocking recv bounded by RCVTIMEO, not a poll then a recv: one call into libzmq
        and no Poller object per message (the request path is the RPC floor's, §13).
        """
        ms = max(1, math.ceil((deadline - time.monotonic()) * 1000))
        if ms != self._rcvtimeo:
            self.sock.setsockopt(zmq.RCVTIMEO, ms)
            self._rcvtimeo = ms
        try:
            return protocol.decode(multipart.recv(self.sock))
        except zmq.Again:
            return None if time.monotonic() >= deadline else self._receive_until(deadline)

    def call(
        self,
        method: str,
        timeout: float | None = None,
        progress: Any = None,
        idle: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """A broker call (devices, lease.acquire, ...)."""
        return self.request(protocol.Call.of(method, kwargs), timeout, progress, idle)

    def call_device(
        self,
        device: str,
        method: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        lease: str | None = None,
        timeout: float | None = None,
        force: str | None = None,
    ) -> Any:
        request = protocol.Request.call(device, method, args, kwargs, lease, force)
        return self.request(request, timeout)
