"""The trio SDK: the same protocol and API as ``Lab``, for async code.

    async with AsyncLab() as lab:
        async with lab.lease("board=rpi4") as lease:
            await lease.power.on()
            async with lease.serial.console() as con:
                await con.expect("login:", timeout=60)

One receiver task (owned by the ``AsyncLab``'s nursery) routes replies to waiting calls
by request id; lease keepalives run in the same nursery, each under its lease's cancel
scope. Request ids, progress and error mapping are ``core``'s, shared with ``Lab``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

import trio
import zmq

from . import core, protocol
from .aio_streams import AsyncByteStream, AsyncConsole, AsyncEventStream, watch_handshake
from .client import (
    CONNECT_TIMEOUT,
    RequestForgotten,
    broker_address,
    holder_identity,
    identity_metadata,
)
from .durations import parse_duration
from .errors import BrokerUnreachable, LabError, LeaseNotFound, LeaseRequired, MethodNotFound
from .keys import ClientKeys, client_keys, secure
from .lease_view import DeviceInfo, LeaseView
from .triozmq import TrioSocket

__all__ = ["AsyncDevice", "AsyncLab", "AsyncLease"]


class AsyncDevice:
    def __init__(
        self,
        lab: AsyncLab,
        name: str,
        info: dict[str, Any],
        lease: str | None = None,
        force: str | None = None,
    ) -> None:
        self._lab, self.name, self.info, self.lease_id = lab, name, info, lease
        #: the reason mutating calls on a device in maintenance are forced (journaled)
        self.force = force

    @property
    def kind(self) -> str:
        """The device's kind (``power``, ``serial``, ...), from the broker."""
        return str(self.info.get("kind", ""))

    @property
    def methods(self) -> dict[str, Any]:
        """The device's interface: ``{method: {doc, args, mutating}}``."""
        return dict(self.info.get("interface", {}).get("methods", {}))

    async def call(
        self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> Any:
        """Call ``method`` on the device; raises the driver's typed error, Timeout after ``timeout`` s."""
        msg = protocol.Request.call(self.name, method, args, kwargs, self.lease_id, self.force)
        return await self._lab.request(msg, timeout)

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_"):
            raise AttributeError(method)
        if method not in self.methods:
            raise MethodNotFound(
                f"device {self.name!r} has no method {method!r}; it has: {', '.join(sorted(self.methods))}"
            )

        async def bound(*args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
            return await self.call(method, *args, timeout=timeout, **kwargs)

        bound.__name__ = method
        return bound

    def stream(
        self, name: str, write: bool | None = None, resume: float = core.RESUME_FOR, **args: Any
    ) -> AsyncByteStream:
        """A byte stream, opened by ``async with``; as ``Device.stream`` (writable by
        default under a lease or a ``force`` reason, which every reopen sends again)."""
        if write is None:
            write = self._may_write
        return AsyncByteStream(self._lab, self.name, name, write, self.lease_id, args, resume,
                               self.force)  # fmt: skip

    @property
    def _may_write(self) -> bool:
        """Whether streams open writable by default: under a lease, or forced."""
        return self.lease_id is not None or self.force is not None

    def console(
        self, since: int | None = None, write: bool | None = None, encoding: str | None = "utf-8"
    ) -> AsyncConsole:
        """A pexpect-style console (``async with device.console() as con``); writable if
        the device is leased or forced, as ``Device.console``."""
        from secrets import token_hex

        args: dict[str, Any] = {} if since is None else {"since": since}
        if self._may_write if write is None else write:
            args["input_id"] = token_hex(8)  # input lost in a broker restart is resent
        return AsyncConsole(self.stream("console", write=write, **args), encoding=encoding)

    def __repr__(self) -> str:
        return f"<AsyncDevice {self.name} kind={self.kind}>"


class AsyncLease(LeaseView):
    """Devices held until ``release()`` (or the end of ``async with``), expiry, or the
    holder going silent; keepalives run in the lab's nursery until then."""

    def __init__(self, lab: AsyncLab, info: dict[str, Any]) -> None:
        super().__init__(info)
        self._lab = lab
        self.released = False
        self._keepalive: trio.CancelScope | None = None

    def __getitem__(self, name: str) -> AsyncDevice:
        return AsyncDevice(self._lab, name, self.device_info(name), self.id)

    def __getattr__(self, kind: str) -> AsyncDevice:
        if kind.startswith("_") or kind == "info":
            raise AttributeError(kind)
        return self[self.name_of_kind(kind)]

    async def extend(self, duration: str | float) -> None:
        """Push the lease's end back by ``duration`` (``"1h"`` or seconds)."""
        self.info = await self._lab.extend_lease(self.id, duration)

    async def release(self, reset: bool = True) -> None:
        """Give the lease back (``reset=False``: skip the devices' on-release reset)."""
        if self.released:
            return
        self.released = True
        if self._keepalive is not None:
            self._keepalive.cancel()
        with trio.CancelScope(shield=True), trio.move_on_after(self._lab.timeout):
            try:
                await self._lab.call("lease.release", id=self.id, reset=reset,
                                     who=holder_identity())  # fmt: skip
            except LeaseNotFound:
                pass  # already ended (expired, or forced): nothing left to give back

    async def __aenter__(self) -> AsyncLease:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.release()


class AsyncLab:
    """A connection to one lab's broker; use it as ``async with AsyncLab() as lab``."""

    def __init__(
        self,
        broker: str | None = None,
        timeout: float = protocol.DEFAULT_TIMEOUT,
        keys: ClientKeys | Literal[False] | None = None,
    ) -> None:
        """``keys``: CURVE keys (default: from the environment, none there means open;
        False: open, whatever the environment says)."""
        self.address = broker_address(broker)
        self.timeout = timeout
        self.keys = (keys or None) if keys is not None else client_keys()
        self._pending: dict[int, trio.MemorySendChannel[protocol.Message]] = {}
        self._requests = core.Requests()
        self._answered = False
        #: requests waiting for that, each with its full deadline: until the broker first
        #: answers a request waits CONNECT_TIMEOUT at most (it is probably not there)
        self._first_waits: dict[trio.CancelScope, float] = {}
        self._refusal: BrokerUnreachable | None = None  # the handshake refused for good
        self._welcome: dict[str, Any] | None = None

    async def __aenter__(self) -> AsyncLab:
        raw: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.setsockopt(zmq.METADATA, identity_metadata())  # who we are, per connection
        self.handshake = secure(raw, self.keys, self.address)
        raw.connect(self.address)
        self.sock = TrioSocket(raw)
        self._answered, self._refusal = False, None  # a new connection
        self._watching = trio.CancelScope()  # the handshake watch, until the first answer
        self._nursery_cm = trio.open_nursery()
        self.nursery = await self._nursery_cm.__aenter__()
        self.nursery.start_soon(self._watch_handshake)
        self.nursery.start_soon(self._receiver)
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        self.nursery.cancel_scope.cancel()
        try:
            result = await self._nursery_cm.__aexit__(*exc)
        except BaseExceptionGroup as group:  # raise the body's own error as Lab does, not
            if exc[1] is None or group.exceptions != (exc[1],):  # trio's group around it
                raise
            raise exc[1] from None
        finally:
            self.handshake.stop()
            self.sock.close()
        return result

    async def _watch_handshake(self) -> None:
        """Until the broker first answers: fail the waiting requests as soon as a handshake
        is refused (as ``Lab`` does), not at their timeout."""
        with self._watching:
            await watch_handshake(self.handshake, self._refused)

    def _refused(self, error: BrokerUnreachable) -> None:
        """Refused for good: libzmq does not dial again after a refused key or a mechanism
        mismatch, so the waiting requests fail now, and the later ones at once."""
        self._refusal = error
        for waiting in self._first_waits:  # each raises the handshake's line (request's end)
            waiting.cancel()

    async def _receiver(self) -> None:
        while True:
            frames = await self.sock.recv()
            try:
                msg = protocol.decode(frames)
            except LabError:
                continue
            if not self._answered:  # the first answer: the handshake is good, stop watching
                self._answered = True
                self._watching.cancel()
                for waiting, deadline in self._first_waits.items():
                    waiting.deadline = deadline  # the broker is there: the call's own timeout
                self._first_waits.clear()
            chan = self._pending.get(msg.id)
            if chan is not None:
                chan.send_nowait(msg)

    async def request(
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
        if self._refusal is not None:
            raise BrokerUnreachable(self._refusal.message, self._refusal.details)
        timeout = self.timeout if timeout is None else timeout
        rid, frames = self._requests.frames(msg, timeout)
        send, recv = trio.open_memory_channel[protocol.Message](math.inf)
        self._pending[rid] = send
        first = not self._answered
        waiting = trio.move_on_after(min(timeout, CONNECT_TIMEOUT) if first else timeout)
        try:
            with waiting:
                if first:  # a refusal cancels it (no peer left to send to)
                    self._first_waits[waiting] = trio.current_time() + timeout
                await self.sock.send(frames)
                while True:
                    got = None
                    with trio.move_on_after(math.inf if idle is None else idle):
                        got = await recv.receive()
                    if got is None:
                        raise RequestForgotten(f"the broker stopped answering about request {rid}")
                    done, value = core.settle(got, progress)
                    if done:
                        return value
        finally:
            del self._pending[rid]
            self._first_waits.pop(waiting, None)
        # timed out, or _refused; the handshake watch may still read the monitor: take
        # only what it was given
        refused = None if self._answered else self.handshake.error(drain=False)
        waited = timeout if self._answered else min(timeout, CONNECT_TIMEOUT)
        raise refused or core.timeout_error(self.address, msg, waited, self._answered)

    async def call(
        self,
        method: str,
        timeout: float | None = None,
        progress: Any = None,
        idle: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """A broker call (devices, lease.acquire, ...)."""
        return await self.request(protocol.Call.of(method, kwargs), timeout, progress, idle)

    # -- discovery --------------------------------------------------------------------------
    async def hello(self) -> dict[str, Any]:
        """The broker's settings: ``events`` address, ``heartbeat``, ``group_label``, ..."""
        if self._welcome is None:
            self._welcome = await self.call("hello")
        return self._welcome

    async def group_label(self) -> str:
        """As ``Lab.group_label``: the label that groups one DUT's devices."""
        return str((await self.hello()).get("group_label") or "dut")

    async def group_selector(self, device: str) -> str:
        """As ``Lab.group_selector``: every device of ``device``'s group."""
        labels = (await self.call("device", name=device)).get("labels", {})
        label = await self.group_label()
        value = labels.get(label)
        return f"{label}={value}" if value else f"name={device}"

    async def devices(self, selector: str = "") -> list[DeviceInfo]:
        """Devices matching ``selector`` (all with ""): typed ``DeviceInfo`` dicts."""
        return [DeviceInfo(d) for d in await self.call("devices", selector=selector)]

    async def device(
        self, name: str, lease: AsyncLease | str | None = None, force: str | None = None
    ) -> AsyncDevice:
        """A proxy for device ``name``; with ``lease``, mutating calls are made under it.
        ``force`` (a reason): operate a device in maintenance, no lease (admins; journaled)."""
        lease_id = lease.id if isinstance(lease, AsyncLease) else lease
        return AsyncDevice(self, name, await self.call("device", name=name), lease_id, force)

    # -- leases -----------------------------------------------------------------------------
    async def acquire(
        self,
        selector: str,
        duration: str | float = "30m",
        wait: str | float = 0,
        progress: Any = None,
        keepalive: bool = True,
    ) -> AsyncLease:
        """Lease one free group matching ``selector`` (as ``Lab.lease``, re-queueing the
        same way when a restarted broker forgot the request); the caller releases it
        (``await lease.release()`` or ``async with``)."""
        wait_s = parse_duration(wait)
        give_up = trio.current_time() + wait_s
        idle = core.requeue_after(float((await self.hello()).get("heartbeat", 2.0)), wait_s)
        while True:
            left = max(0.0, give_up - trio.current_time())
            try:
                info = await self.call(
                    "lease.acquire",
                    timeout=left + self.timeout,
                    progress=progress,
                    idle=idle,
                    selector=selector,
                    duration=parse_duration(duration),
                    wait=left,
                    holder=holder_identity(),
                    keepalive=keepalive,
                )
                break
            except RequestForgotten:
                if progress is not None:
                    progress({"position": None, "requeued": True})
        held = AsyncLease(self, info)
        if keepalive:
            held._keepalive = await self.nursery.start(self._keepalive, held)
        return held

    @asynccontextmanager
    async def lease(
        self,
        selector: str,
        duration: str | float = "30m",
        wait: str | float = 0,
        progress: Any = None,
    ) -> AsyncIterator[AsyncLease]:
        """``async with lab.lease(sel) as lease``: acquired, kept alive, released."""
        held = await self.acquire(selector, duration, wait, progress)
        try:
            yield held
        finally:
            await held.release()

    async def attach(self, lease_id: str) -> AsyncLease:
        """Use a lease taken elsewhere (``labctl lease acquire``, ``LABCTL_LEASE``); its
        keepalives run until ``release()`` or this lab closes."""
        held = AsyncLease(self, await self.call("lease.show", id=lease_id))
        held._keepalive = await self.nursery.start(self._keepalive, held)
        return held

    async def _keepalive(
        self, held: AsyncLease, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        interval = max(float(held.info["grace"]) / 3, 0.05)
        with trio.CancelScope() as scope:
            task_status.started(scope)
            while True:
                await trio.sleep(interval)
                try:
                    await self.call("lease.keepalive", ids=[held.id])
                except LabError:
                    pass  # the broker may be restarting; the lease survives it

    async def one_shot(
        self,
        device: str,
        method: str,
        *args: Any,
        lease: str | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """As ``Lab.one_shot``: a mutating call without a lease leases the device just for
        it and releases it without the on-release reset."""
        try:
            dev = await self.device(device, lease=lease)
            return await dev.call(method, *args, timeout=timeout, **kwargs)
        except LeaseRequired:
            if lease is not None:
                raise
        held = await self.acquire(f"name={device}", duration=60 + (timeout or self.timeout))
        try:
            dev = await self.device(device, lease=held)
            return await dev.call(method, *args, timeout=timeout, **kwargs)
        finally:
            await held.release(reset=False)

    @asynccontextmanager
    async def write_access(
        self, device: str, lease: str | AsyncLease | None = None, duration: str | float = "12h"
    ) -> AsyncIterator[AsyncLease]:
        """As ``Lab.write_access``: the given lease, or a temporary one on the device's
        whole group, released on exit without the on-release reset."""
        if isinstance(lease, AsyncLease):
            yield lease
            return
        if lease is not None:
            yield await self.attach(lease)
            return
        held = await self.acquire(await self.group_selector(device), duration=duration)
        try:
            yield held
        finally:
            await held.release(reset=False)

    async def leases(self) -> dict[str, Any]:
        """``{leases: [public view], queue: [...]}`` (as ``Lab.leases``)."""
        return await self.call("lease.list")  # type: ignore[no-any-return]

    async def lease_info(self, lease: str) -> dict[str, Any]:
        """A lease by id (full description) or public ref (public view)."""
        return await self.call("lease.show", id=lease)  # type: ignore[no-any-return]

    async def extend_lease(self, lease_id: str, duration: str | float) -> dict[str, Any]:
        """Push a lease's end back by ``duration``; its new description."""
        return await self.call(  # type: ignore[no-any-return]
            "lease.extend", id=lease_id, duration=parse_duration(duration), who=holder_identity()
        )

    async def release_lease(self, lease: str, force: bool = False, reason: str = "") -> None:
        """Give a lease back by id (admins: anyone's by ref, with ``force`` and ``reason``)."""
        await self.call("lease.release", id=lease, force=force, reason=reason,
                        who=holder_identity())  # fmt: skip

    # -- administration and events ----------------------------------------------------------
    async def set_health(self, device: str, health: str, reason: str = "") -> dict[str, Any]:
        """Mark a device ``good``, ``maintenance`` or ``bad`` (with a reason)."""
        return await self.call(  # type: ignore[no-any-return]
            "health", name=device, health=health, reason=reason, who=holder_identity()
        )

    async def remove_device(self, device: str) -> dict[str, Any]:
        """Forget an offline, unleased device; DeviceBusy while online or leased."""
        return await self.call("device.remove", name=device)  # type: ignore[no-any-return]

    async def history(
        self, since: float = 3600, topic: str = "*", limit: int = 10000
    ) -> list[dict[str, Any]]:
        """Journaled events of the last ``since`` seconds matching ``topic``, oldest first."""
        return await self.call(  # type: ignore[no-any-return]
            "events", since=since, topic=topic, limit=limit
        )

    def event_stream(self, topic: str = "*", since: float | None = None) -> AsyncEventStream:
        """``async with lab.event_stream("device.*") as events: async for ev in events``;
        live once entered; with ``since`` (seconds) the journal comes first."""
        return AsyncEventStream(self, topic, since)

    def events(self, topic: str = "*", since: float | None = None) -> AsyncEventStream:
        """The same as ``event_stream`` (the name ``Lab.events`` has)."""
        return AsyncEventStream(self, topic, since)
