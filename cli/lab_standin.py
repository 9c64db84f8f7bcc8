"""A failing service's stand-in: while `lab up` waits to restart a service that keeps failing,
its devices are registered with the broker as offline, with the reason, so `labctl devices`
and the dashboard say why instead of not listing them at all.

The stand-in speaks the service side of PROTOCOL.md §5 (REGISTER, WELCOME, HEARTBEAT,
DISCONNECT) and nothing else: its devices export no methods, and a call never reaches it (the
broker refuses calls to an offline device). It sends DISCONNECT when cancelled, so the broker
counts it gone at once and the real service, restarted next, registers without a
``duplicate-name`` wait.
"""

from __future__ import annotations

import getpass
import os
import socket
from typing import Any

import trio
import zmq

from labctl import __version__, protocol
from labctl.errors import ProtocolError
from labctl.keys import apply
from labctl.services.config import ServiceConfig
from labctl.triozmq import TrioSocket


def registration(cfg: ServiceConfig) -> protocol.Register:
    """``cfg``'s devices as the real service registers them, with empty interfaces."""
    devices = [
        {
            "name": entry.name,
            "kind": cfg.kind,
            "driver": cfg.driver,
            "labels": {**cfg.labels, **entry.labels},
            "interface": {"kind": cfg.kind, "methods": {}, "streams": {}},
            "on_release": entry.on_release,
        }
        for entry in cfg.device_entries()
    ]
    return protocol.Register(service=cfg.service, devices=devices, host=socket.gethostname(),
                             pid=os.getpid(), user=getpass.getuser(), version=__version__)  # fmt: skip


async def stand_in(cfg: ServiceConfig, address: str, reason: str, keys: Any = None) -> None:
    """Hold ``cfg``'s devices offline with ``reason`` until cancelled (then DISCONNECT);
    until the broker welcomes it, keep registering (the caller's deadline ends that)."""
    raw: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    apply(raw, keys)  # CURVE keys (labctl.keys.ClientKeys), or None: open
    raw.connect(address)
    sock = TrioSocket(raw)
    registered = False
    heartbeat = 2.0
    try:
        while not registered:  # the crashed service may still count as alive: retry
            await sock.send(registration(cfg).to_frames())
            with trio.move_on_after(heartbeat):
                while not registered:
                    msg = _decode(await sock.recv())
                    if msg is not None and msg.mtype == protocol.WELCOME:
                        heartbeat = float(protocol.Welcome.parse(msg).heartbeat or heartbeat)
                        registered = True
                    elif msg is not None and msg.mtype == protocol.ERROR:
                        break  # duplicate-name: its old routing id is not timed out yet
            if not registered:
                await trio.sleep(heartbeat)
        for entry in cfg.device_entries():
            body = {"online": False, "reason": reason}
            await sock.send(protocol.Event.of(f"device.{entry.name}.online", body).to_frames())
        while True:  # heartbeats keep it registered; whatever the broker says is ignored
            with trio.move_on_after(heartbeat):
                while True:
                    await sock.recv()
            await sock.send(protocol.Heartbeat("service").to_frames())
    finally:
        if registered:
            sock.send_nowait(protocol.Disconnect("service stopping").to_frames())
        sock.close(linger=500)  # the DISCONNECT must get out before the socket goes


def _decode(frames: list[Any]) -> protocol.Message | None:
    try:
        return protocol.decode(frames)
    except ProtocolError:
        return None
