"""The sync SDK's transport: one blocking DEALER, no event loop, no thread per call.

A blocking pyzmq round trip costs ~50 µs here, an event-loop hop several times that, so
the sync API talks to the socket directly (DESIGN §13). One ``BusClient`` is not thread
safe; the lease keepalive thread uses its own.
"""

from __future__ import annotations

import getpass
import os
import socket
import time
from typing import Any

import zmq

from . import protocol
from .errors import BadArguments, BrokerUnreachable, ProtocolError, Timeout, from_wire

DEFAULT_BROKER = "tcp://127.0.0.1:5550"
#: how long the first request waits before calling the broker unreachable
CONNECT_TIMEOUT = float(os.environ.get("LABCTL_CONNECT_TIMEOUT", "3"))


def broker_address(address: str | None = None) -> str:
    return address or os.environ.get("LABCTL_BROKER") or DEFAULT_BROKER


def holder_identity() -> str:
    """Who a lease is held by: user@host:pid (self-asserted until CurveZMQ identities)."""
    return f"{getpass.getuser()}@{socket.gethostname()}:{os.getpid()}"


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
        self, address: str | None = None, timeout: float = protocol.DEFAULT_TIMEOUT
    ) -> None:
        self.address = broker_address(address)
        self.timeout = timeout
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(self.address)
        self._next_id = 0
        self.stream_handler: Any = None  # set by streams sharing this socket
        self._answered = False  # any reply yet? tells 'broker down' from 'call slow'

    def close(self) -> None:
        self.sock.close(0)

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def request(
        self,
        mtype: bytes,
        header: dict[str, Any],
        payload: list[Any] | None = None,
        timeout: float | None = None,
        progress: Any = None,
        idle: float | None = None,
    ) -> Any:
        """Send one request and wait for its reply; raise the typed error it carries.

        With ``idle``, a request that hears nothing about itself (reply or progress) for
        that long raises RequestForgotten: the broker restarted and lost it.
        """
        timeout = self.timeout if timeout is None else timeout
        rid = self._new_id()
        full_deadline = time.time() + timeout
        header = {**header, "id": rid, "timeout": timeout}
        # until the broker has answered once, give up early: it is probably not there
        deadline = (
            full_deadline if self._answered else min(full_deadline, time.time() + CONNECT_TIMEOUT)
        )
        for frame in payload or ():
            if len(frame) > protocol.MAX_PAYLOAD:
                raise BadArguments(
                    f"arguments of {len(frame)} bytes exceed the {protocol.MAX_PAYLOAD}-byte "
                    "limit of one message; use a stream for bulk data"
                )
        self.sock.send_multipart(protocol.encode(mtype, header, *(payload or [])))
        sock = self.sock
        heard = time.time()
        while True:
            limit = deadline if idle is None else min(deadline, heard + idle)
            remaining = limit - time.time()
            if remaining <= 0 or not sock.poll(int(remaining * 1000) + 1, zmq.POLLIN):
                if idle is not None and self._answered and time.time() < full_deadline:
                    raise RequestForgotten(f"the broker stopped answering about request {rid}")
                raise self._timeout_error(
                    mtype, header, timeout if self._answered else CONNECT_TIMEOUT
                )
            msg = protocol.decode(sock.recv_multipart())
            self._answered, deadline = True, full_deadline
            if msg.header.get("id") != rid:
                self._other(msg)
                continue
            heard = time.time()
            if msg.mtype == protocol.REPLY:
                body = protocol.unpack(msg.payload[0]) if msg.payload else None
                if msg.header.get("progress"):
                    if progress is not None:
                        progress(body)
                    continue
                return body
            if msg.mtype == protocol.ERROR:
                h = msg.header
                raise from_wire(str(h.get("code")), str(h.get("message")), h.get("details"))
            raise ProtocolError(f"unexpected {msg.name} in reply to a request")

    def _other(self, msg: protocol.Message) -> None:
        if self.stream_handler is not None:
            self.stream_handler(msg)

    def _timeout_error(self, mtype: bytes, header: dict[str, Any], timeout: float) -> Timeout:
        if not self._answered:
            return BrokerUnreachable(
                f"no answer from the broker at {self.address} within {timeout:g}s "
                "(is it running? start one with `labctl broker run` or `labctl lab up`)"
            )
        what = header.get("method") or protocol.NAMES.get(mtype, "request")
        dev = header.get("device")
        return Timeout(f"{dev + '.' if dev else ''}{what}: no reply within {timeout:g}s")

    def call(
        self,
        method: str,
        timeout: float | None = None,
        progress: Any = None,
        idle: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """A broker call (devices, lease.acquire, ...)."""
        args = [protocol.pack_args([], kwargs)]
        return self.request(protocol.CALL, {"method": method}, args, timeout, progress, idle)

    def call_device(
        self,
        device: str,
        method: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        lease: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        header = {"device": device, "method": method, "lease": lease}
        return self.request(
            protocol.REQUEST, header, [protocol.pack_args(args, kwargs or {})], timeout
        )
