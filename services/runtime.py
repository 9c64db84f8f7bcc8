"""The service runtime: one process, one DEALER to the broker, one driver per device.

It registers, heartbeats, dispatches requests to ``@export`` methods, runs streams, and
publishes driver events. When it stops hearing the broker (or the broker says it does not
know us, after a restart) it drops the socket, connects again and re-registers, so a
broker restart heals by itself. Driver failures become typed error replies; they never
end the process.
"""

from __future__ import annotations

import getpass
import inspect
import os
import socket
import time
import types
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
import trio
import zmq

from labctl import __version__, fields, protocol
from labctl.errors import (
    ConfigError,
    DriverError,
    LabError,
    LeaseNotFound,
    MethodNotFound,
    ProtocolError,
)
from labctl.keys import secure
from labctl.protocol import Message
from labctl.triozmq import TrioSocket

from .catalog import load_driver
from .config import ServiceConfig, check_driver_config, describe_validation
from .driver import DeviceContext, Driver
from .export import exported_methods, find_mark
from .stream_end import BusStreamEnd

log = structlog.get_logger("service")


class BrokerLost(Exception):
    """The broker went silent or forgot us: reconnect and register again."""


#: a driver call ready to run: request id, bound method, args, kwargs, the caller's timeout
#: (None: none), device, whether it mutates
_Call = tuple[Any, Any, list[Any], dict[str, Any], float | None, str, bool]


@types.coroutine
def stepped(coro: Coroutine[Any, Any, Any], on_suspend: Callable[[], None]) -> Any:
    """``await coro``, calling ``on_suspend()`` once, when ``coro`` first suspends.

    Everything runs in the awaiting task, as a plain ``await`` would (trio's traps, cancel
    scopes and locks see the right task); only the first step is taken by hand, so the
    caller learns whether the coroutine finished without suspending.
    """
    try:
        trap = coro.send(None)
    except StopIteration as done:
        return done.value
    on_suspend()
    while True:
        try:
            sent = yield trap
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # trio delivers Cancelled (and errors) by throwing
            try:
                trap = coro.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                trap = coro.send(sent)
            except StopIteration as done:
                return done.value


def build_drivers(cfg: ServiceConfig, source: str, runtime: ServiceRuntime) -> dict[str, Driver]:
    """One validated driver per device; ConfigError names file, device and field."""
    from pydantic import ValidationError

    cls = load_driver(cfg.kind, cfg.driver)
    check_driver_config(cfg, source, cls)  # a service-level typo is the service's, not devices[0]'s
    drivers: dict[str, Driver] = {}
    for i, entry in enumerate(cfg.device_entries()):
        merged = {**cfg.config, **entry.config}
        try:
            conf = cls.Config.model_validate(merged)
        except ValidationError as exc:
            where = (
                f"{source}: devices[{i}] ({entry.name}) config"
                if cfg.devices
                else f"{source}: config"
            )
            raise ConfigError(describe_validation(where, exc)) from None
        if entry.name in drivers:
            raise ConfigError(f"{source}: device name {entry.name!r} appears twice")
        ctx = DeviceContext(entry.name, runtime.publish, runtime.online_setter(entry.name))
        drivers[entry.name] = cls(ctx, conf)
    return drivers


class ServiceRuntime:
    def __init__(self, cfg: ServiceConfig, source: str = "<config>") -> None:
        self.cfg = cfg
        self.address = cfg.broker_address()
        self.keys = cfg.client_keys(source)  # CURVE keys, or None to run open
        self.zctx = zmq.Context.instance()
        self.drivers = build_drivers(cfg, source, self)
        self.methods = {name: exported_methods(d) for name, d in self.drivers.items()}
        self.sock: TrioSocket | None = None
        self.heartbeat = cfg.heartbeat or protocol.HEARTBEAT_INTERVAL
        self.liveness = protocol.HEARTBEAT_LIVENESS
        self.registered = trio.Event()
        self.streams: dict[int, BusStreamEnd] = {}
        self._last_status: dict[str, protocol.Event] = {}
        self._online: dict[str, dict[str, Any]] = {}
        self._nursery: trio.Nursery | None = None
        self._backoff = 0.1
        self._mutating: dict[str, set[trio.CancelScope]] = {}  # running mutating calls
        self._revoked: set[trio.CancelScope] = set()  # cancelled because their lease ended
        self._entries: dict[tuple[str, str], tuple[Any, bool, bool, inspect.Signature | None]] = {}

    # -- what drivers call --------------------------------------------------------------
    def publish(self, topic: str, body: Any) -> None:
        event = protocol.Event.of(topic, body)
        if topic.endswith(".status"):
            self._last_status[topic] = event
        self._send_now(event.to_frames())

    def online_setter(self, name: str) -> Any:
        def set_online(online: bool, reason: str = "") -> None:
            body = {"online": online, "reason": reason}
            self._online[name] = body
            self.publish(f"device.{name}.online", body)

        return set_online

    def _send_now(self, frames: list[Any]) -> None:
        if self.sock is not None and self.registered.is_set():
            self.sock.send_nowait(frames)  # events are replayed after re-registration

    async def _send(self, frames: list[Any], copy: bool = True) -> None:
        if self.sock is None:
            raise trio.ClosedResourceError("not connected")
        if not self.sock.send_nowait(frames, copy):
            await self.sock.send(frames, copy)

    # -- life cycle ---------------------------------------------------------------------
    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for drv in self.drivers.values():
                await drv.start(nursery)
            task_status.started(self)
            self._backoff = 0.1
            while True:
                try:
                    await self._session()
                except* BrokerLost as group:
                    reason = "; ".join(str(e) for e in group.exceptions)
                    log.warning("broker lost; reconnecting", reason=reason, broker=self.address)
                await trio.sleep(self._backoff)
                self._backoff = min(self._backoff * 2, self.heartbeat)

    async def aclose(self) -> None:
        if self.sock is not None and self.registered.is_set():
            self.sock.send_nowait(protocol.Disconnect("service stopping").to_frames())
        for drv in self.drivers.values():
            with trio.move_on_after(2):
                await drv.close()

    def _registration(self) -> protocol.Register:
        devices = []
        for entry in self.cfg.device_entries():
            drv = self.drivers[entry.name]
            devices.append(
                {
                    "name": entry.name,
                    "kind": self.cfg.kind,
                    "driver": self.cfg.driver,
                    "labels": {**self.cfg.labels, **entry.labels},
                    "interface": drv.interface(),
                    "on_release": entry.on_release,
                }
            )
        return protocol.Register(
            service=self.cfg.service,
            devices=devices,  # sent as the payload frame: a big PDU outgrows a header
            host=socket.gethostname(),
            pid=os.getpid(),
            user=getpass.getuser(),
            version=__version__,
        )

    async def _session(self) -> None:
        raw = self.zctx.socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.setsockopt(zmq.SNDHWM, 10000)
        raw.setsockopt(zmq.RCVHWM, 10000)
        self._handshake = secure(raw, self.keys, self.address)  # says why no welcome came
        raw.connect(self.address)
        self.sock = sock = TrioSocket(raw)
        self.registered = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                await self._send(self._registration().to_frames())
                self._last_heard = time.monotonic()
                nursery.start_soon(self._heartbeats)
                await self._receive_loop(sock, nursery)
        finally:
            for end in self.streams.values():
                end.scope.cancel()
            self.streams.clear()
            self.registered = trio.Event()
            self.sock = None
            self._handshake.stop()
            sock.close()

    async def _heartbeats(self) -> None:
        with trio.move_on_after(self.heartbeat * self.liveness):
            await self.registered.wait()
        if not self.registered.is_set():
            why = self._handshake.explain()  # a refused or missing key: say so, keep retrying
            raise BrokerLost(why or f"no welcome from the broker at {self.address}")
        while True:
            await trio.sleep(self.heartbeat)
            silent = time.monotonic() - self._last_heard
            if silent > self.heartbeat * self.liveness:
                raise BrokerLost(f"no word from the broker for {silent:.1f}s")
            if self.sock is not None:
                self.sock.send_nowait(protocol.Heartbeat("service").to_frames())

    async def _receive_loop(self, sock: TrioSocket, nursery: trio.Nursery) -> None:
        """Take every message that is ready, then wait. A driver call runs right here:
        one that completes without suspending costs no task, no cancel scope and no trip
        through the scheduler (issue 8.5). One that suspends goes on in this task while a
        new task takes over receiving; this one ends with its call.

        The cancel scope is entered before anything runs, so it can become the scope of
        the call this task ends with: its deadline and lease-end cancel are set when the
        call first suspends. A scope entered only then would nest inside any scope the
        driver opened before suspending, and trio refuses scopes closed out of order."""
        scope = trio.CancelScope()
        ran: list[_Call] = []  # the call that suspended, which this task ends with
        try:
            with scope:
                await self._receive(sock, nursery, scope, ran)
        finally:
            if ran:
                self._mutating.get(ran[0][5], set()).discard(scope)  # [5]: its device
        if ran and scope.cancelled_caught:
            rid, _fn, _args, _kwargs, timeout, device, _mutating = ran[0]
            if timeout is None or scope in self._revoked:  # no timeout: a lease end
                self._revoked.discard(scope)
                err = LeaseNotFound("the lease ended while the call ran")
                self._reply_error(rid, err, device, None)
            else:
                log.warning("call cancelled after its timeout", device=device)

    async def _receive(
        self, sock: TrioSocket, nursery: trio.Nursery, scope: trio.CancelScope, ran: list[_Call]
    ) -> None:
        """Receive and act until a driver call suspends (it goes into ``ran``); then finish
        that call and return."""
        recv, handle = sock.recv_nowait, self._handle
        n = 0
        while True:
            frames = recv(copy=False)  # payloads: no copy
            if frames is None:
                n = 0
                await sock.wait_readable()  # recv_nowait just read EVENTS: no second look
                frames = sock.recv_woken(copy=False)
                if frames is None:
                    continue
            call = handle(frames, nursery)
            if call is not None and await self._call_inline(call, sock, nursery, scope, ran):
                return
            n += 1
            if n == 256:  # a flood: let the other tasks run
                n = 0
                await trio.lowlevel.checkpoint()

    async def _call_inline(
        self,
        call: _Call,
        sock: TrioSocket,
        nursery: trio.Nursery,
        scope: trio.CancelScope,
        ran: list[_Call],
    ) -> bool:
        """Run ``call`` in this task; True if it suspended (then it is in ``ran``, another
        task receives now, and ``scope`` is the call's: its deadline is the caller's
        timeout, a lease end cancels it if it mutates). Its reply (or error) is sent unless
        the scope cancelled it."""
        rid, fn, args, kwargs, timeout, device, mutating = call

        def on_suspend() -> None:
            ran.append(call)
            if timeout is not None:  # nobody waits for the answer past the caller's timeout
                scope.deadline = trio.current_time() + timeout
            if mutating:  # a lease end cancels it (``__reset__``)
                self._mutating.setdefault(device, set()).add(scope)
            nursery.start_soon(self._receive_loop, sock, nursery)

        try:
            result = await stepped(fn(*args, **kwargs), on_suspend)
        except Exception as exc:
            self._reply_error(rid, exc, None, getattr(fn, "__name__", "?"))
        else:
            self._reply(rid, result)
        return bool(ran)

    def _handle(self, frames: list[Any], nursery: trio.Nursery) -> _Call | None:
        """Act on one message; a driver call to run is returned, not run."""
        self._last_heard = time.monotonic()
        try:
            msg = protocol.decode(frames)
        except ProtocolError as err:
            log.warning("bad message from broker", error=err.message)
            return None
        try:
            if msg.mtype == protocol.REQUEST:
                return self._dispatch(msg, nursery)
            self._route(msg, nursery)
        except BrokerLost:
            raise
        except Exception:  # whatever a message holds, the service keeps running
            log.exception("message from the broker could not be handled", type=msg.name)
        return None

    def _route(self, msg: Message, nursery: trio.Nursery) -> None:
        t = msg.mtype
        if t == protocol.STREAM_DATA or t == protocol.STREAM_CREDIT or t == protocol.STREAM_CLOSE:
            self._stream_message(msg, nursery)
        elif t == protocol.STREAM_OPEN:
            self._open_stream(msg, nursery)
        elif t == protocol.WELCOME:
            self._welcomed(protocol.Welcome.parse(msg))
        elif t == protocol.DISCONNECT:
            reason = protocol.Disconnect.parse(msg).reason
            raise BrokerLost(f"broker asked us to register again: {reason}")
        elif t == protocol.ERROR and msg.id is None:
            err = protocol.Error.parse(msg)
            log.error("broker refused us", code=err.code, error=err.message)
            if err.code == "duplicate-name":
                raise BrokerLost("registration refused; retrying")

    def _welcomed(self, welcome: protocol.Welcome) -> None:
        if welcome.heartbeat is not None:
            self.heartbeat = float(welcome.heartbeat)
        if welcome.liveness is not None:
            self.liveness = int(welcome.liveness)
        self.registered.set()
        self._backoff = 0.1  # a healthy session: the next loss retries quickly again
        log.info("registered", broker=self.address, devices=list(self.drivers))
        for event in self._last_status.values():  # the new broker has no status cache yet
            self._send_now(event.to_frames())
        for name, body in self._online.items():
            self.publish(f"device.{name}.online", body)

    # -- requests -----------------------------------------------------------------------
    def _dispatch(self, msg: Message, nursery: trio.Nursery) -> _Call | None:
        """Answer a request; for an async method, the call to run (see _receive_loop)."""
        req = protocol.Request.parse(msg)
        rid, device, method = req.id, req.device, req.method
        try:
            if method == "__reset__":
                drv = self.drivers.get(device)  # type: ignore[arg-type]
                if drv is not None:
                    # calls still running under the ended lease must not touch the device
                    # after the reset (or while the next holder has it)
                    for scope in self._mutating.pop(drv.name, set()):
                        self._revoked.add(scope)
                        scope.cancel()
                    nursery.start_soon(self._run_reset, drv, rid)
                return None
            entry = self._entries.get((device, method))  # type: ignore[arg-type]
            if entry is None:
                entry = self._entry(device, method)  # type: ignore[arg-type]
            fn, is_async, mutating, sig = entry
            args, kwargs = req.arguments()
            if sig is not None or args or kwargs:  # a method without parameters needs no bind
                self._check_args(device, method, sig or inspect.signature(fn), args, kwargs)  # type: ignore[arg-type]
            if is_async:  # Request.parse made the timeout a number > 0, or None
                return (rid, fn, args, kwargs, req.timeout, device, mutating)  # type: ignore[return-value]
            self._reply(rid, fn(*args, **kwargs))
        except Exception as exc:
            self._reply_error(rid, exc, device, method)
        return None

    def _entry(self, device: str, method: str) -> tuple[Any, bool, bool, inspect.Signature | None]:
        """How to call ``device.method``, worked out once: the bound method, whether it is
        async, whether it mutates, and its signature (None when it takes no arguments)."""
        fn = self.methods.get(device, {}).get(method)
        if fn is None:
            raise MethodNotFound(f"{device!r} has no method {method!r}")
        mark = find_mark(self.drivers[device], method)
        sig = inspect.signature(fn)
        entry = (
            fn,
            inspect.iscoroutinefunction(fn),
            bool(mark and mark["mutating"]),
            sig if sig.parameters else None,
        )
        self._entries[(device, method)] = entry
        return entry

    @staticmethod
    def _check_args(
        device: str, method: str, sig: inspect.Signature, args: list[Any], kwargs: dict[str, Any]
    ) -> None:
        fields.bind_call(f"{device}.{method}", sig, args, kwargs)  # arity and plain types

    async def _run_reset(self, drv: Driver, rid: Any = None) -> None:
        """Reset after a lease end; answered when the broker gave an id (PROTOCOL.md §8):
        an ERROR makes the broker mark the device bad."""
        try:
            await drv.reset()
            log.info("device reset after lease end", device=drv.name)
        except Exception as exc:
            log.error("reset failed", device=drv.name, error=str(exc))
            if rid is not None:
                self._reply_error(rid, exc, drv.name, "reset")
            return
        if rid is not None:
            self._reply(rid, None)

    def _reply(self, rid: Any, result: Any) -> None:
        try:
            frames = protocol.Reply(rid, result).to_frames()
        except (TypeError, ValueError) as exc:
            self._reply_error(rid, DriverError(f"result cannot be sent: {exc}"), None, None)
            return
        self._send_now(frames)

    def _reply_error(self, rid: Any, exc: Exception, device: Any, method: Any) -> None:
        if not isinstance(exc, LabError):
            log.exception("driver raised", device=device, method=method)
            exc = DriverError(f"{type(exc).__name__}: {exc}")
        self._send_now(protocol.Error.of(exc, rid).to_frames())

    # -- streams ------------------------------------------------------------------------
    def _open_stream(self, msg: Message, nursery: trio.Nursery) -> None:
        offer = protocol.StreamOffer.parse(msg)
        sid, device, name, args = offer.sid, offer.device, offer.stream, offer.args
        drv = self.drivers.get(device)  # type: ignore[arg-type]
        opener = getattr(drv, "open_stream", None)
        if not isinstance(sid, int) or drv is None or opener is None or name not in drv.streams:
            reason = f"{device!r} has no stream {name!r}"
        elif not isinstance(args, dict):
            reason = "stream arguments must be a map"
        else:
            reason = ""
        if reason:
            self._send_now(protocol.StreamClose(sid, reason).to_frames())
            return
        credit = offer.credit if isinstance(offer.credit, int) else 0
        end = BusStreamEnd(sid, args, offer.writable, credit, self._send)
        self.streams[sid] = end
        nursery.start_soon(self._run_stream, opener, name, end)

    async def _run_stream(self, opener: Any, name: str, end: BusStreamEnd) -> None:
        """Run the driver's stream; what it returns is the result STREAM-CLOSE carries,
        what it raises the error (so an upload's writer learns the verdict)."""
        result: Any = protocol.NO_RESULT
        error: Exception | None = None
        try:
            with end.scope:
                await end.start()
                returned = await opener(name, end)
                if returned is not None:
                    result = returned
        except (trio.ClosedResourceError, trio.EndOfChannel, trio.BrokenResourceError):
            pass
        except LabError as exc:
            error = exc
        except Exception as exc:
            log.exception("stream failed", stream=name)
            error = exc
        finally:
            self.streams.pop(end.sid, None)
        if not end.closed and self.sock is not None:
            with trio.move_on_after(1):
                if error is not None:
                    await end.fail(error)
                else:
                    await end.close("stream ended", result=result)

    def _stream_message(self, msg: Message, nursery: trio.Nursery) -> None:
        end = self.streams.get(msg.sid)  # type: ignore[arg-type]
        if end is None:
            return
        if msg.mtype == protocol.STREAM_DATA:
            data = protocol.StreamData.parse(msg)
            for chunk in data.chunks():
                end.deliver(chunk)
            if data.end:
                end.end_of_data()
        elif msg.mtype == protocol.STREAM_CREDIT:
            credit = protocol.StreamCredit.parse(msg).credit
            if isinstance(credit, int) and credit > 0:
                end.add_credit(credit)
        else:
            end.remote_closed()
            nursery.start_soon(self._finish_stream, end)

    @staticmethod
    async def _finish_stream(end: BusStreamEnd) -> None:
        """Let the driver take (and write) what the client sent before it closed, then end
        the task; a driver that reads no input (a read-only stream) gets 2 s at most."""
        with trio.move_on_after(0 if not end.writable else 2):
            await end.drained.wait()  # set when the driver asks for more: all is written
        end.scope.cancel()
