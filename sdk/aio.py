"""The trio SDK: the same protocol and calls as ``Lab``, for async code.

    async with AsyncLab() as lab:
        async with lab.lease("board=rpi4") as lease:
            await lease.power.on()

One receiver task (owned by the ``AsyncLab``'s nursery) routes replies to waiting calls
by request id; lease keepalives run in the same nursery.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
import zmq

from . import protocol
from .client import broker_address, holder_identity
from .durations import parse_duration
from .errors import BrokerUnreachable, LabError, LeaseNotFound, MethodNotFound, Timeout, from_wire
from .lease_view import LeaseView
from .triozmq import TrioSocket


class AsyncDevice:
    def __init__(
        self, lab: AsyncLab, name: str, info: dict[str, Any], lease: str | None = None
    ) -> None:
        self._lab, self.name, self.info, self.lease_id = lab, name, info, lease

    @property
    def methods(self) -> dict[str, Any]:
        return dict(self.info.get("interface", {}).get("methods", {}))

    async def call(
        self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> Any:
        header = {"device": self.name, "method": method, "lease": self.lease_id}
        return await self._lab.request(
            protocol.REQUEST, header, [protocol.pack_args(args, kwargs)], timeout
        )

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_"):
            raise AttributeError(method)
        if method not in self.methods:
            raise MethodNotFound(
                f"device {self.name!r} has no method {method!r}; it has: {', '.join(sorted(self.methods))}"
            )

        async def bound(*args: Any, **kwargs: Any) -> Any:
            return await self.call(method, *args, **kwargs)

        return bound


class AsyncLease(LeaseView):
    def __init__(self, lab: AsyncLab, info: dict[str, Any]) -> None:
        super().__init__(info)
        self._lab = lab

    def __getitem__(self, name: str) -> AsyncDevice:
        return AsyncDevice(self._lab, name, self.device_info(name), self.id)

    def __getattr__(self, kind: str) -> AsyncDevice:
        if kind.startswith("_") or kind == "info":
            raise AttributeError(kind)
        return self[self.name_of_kind(kind)]

    async def extend(self, duration: str | float) -> None:
        self.info = await self._lab.call(
            "lease.extend", id=self.id, duration=parse_duration(duration), who=holder_identity()
        )


class AsyncLab:
    def __init__(
        self, broker: str | None = None, timeout: float = protocol.DEFAULT_TIMEOUT
    ) -> None:
        self.address = broker_address(broker)
        self.timeout = timeout
        self._pending: dict[int, trio.MemorySendChannel[protocol.Message]] = {}
        self._next_id = 0
        self._answered = False

    async def __aenter__(self) -> AsyncLab:
        raw = zmq.Context.instance().socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(self.address)
        self.sock = TrioSocket(raw)
        self._nursery_cm = trio.open_nursery()
        self.nursery = await self._nursery_cm.__aenter__()
        self.nursery.start_soon(self._receiver)
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        self.nursery.cancel_scope.cancel()
        result = await self._nursery_cm.__aexit__(*exc)
        self.sock.close()
        return result

    async def _receiver(self) -> None:
        while True:
            frames = await self.sock.recv()
            try:
                msg = protocol.decode(frames)
            except LabError:
                continue
            self._answered = True
            chan = self._pending.get(msg.header.get("id"))  # type: ignore[arg-type]
            if chan is not None:
                chan.send_nowait(msg)

    async def request(
        self,
        mtype: bytes,
        header: dict[str, Any],
        payload: list[Any],
        timeout: float | None = None,
        progress: Any = None,
    ) -> Any:
        timeout = self.timeout if timeout is None else timeout
        self._next_id += 1
        rid = self._next_id
        send, recv = trio.open_memory_channel[protocol.Message](16)
        self._pending[rid] = send
        try:
            await self.sock.send(
                protocol.encode(mtype, {**header, "id": rid, "timeout": timeout}, *payload)
            )
            with trio.move_on_after(timeout):
                while True:
                    msg = await recv.receive()
                    if msg.mtype == protocol.ERROR:
                        h = msg.header
                        raise from_wire(str(h.get("code")), str(h.get("message")), h.get("details"))
                    body = protocol.unpack(msg.payload[0]) if msg.payload else None
                    if msg.header.get("progress"):
                        if progress is not None:
                            progress(body)
                        continue
                    return body
        finally:
            del self._pending[rid]
        if not self._answered:
            raise BrokerUnreachable(
                f"no answer from the broker at {self.address} within {timeout:g}s"
            )
        raise Timeout(
            f"{header.get('device', '')}{header.get('method', '')}: no reply within {timeout:g}s"
        )

    async def call(
        self, method: str, timeout: float | None = None, progress: Any = None, **kwargs: Any
    ) -> Any:
        return await self.request(
            protocol.CALL, {"method": method}, [protocol.pack_args([], kwargs)], timeout, progress
        )

    async def devices(self, selector: str = "") -> list[dict[str, Any]]:
        return await self.call("devices", selector=selector)  # type: ignore[no-any-return]

    async def device(self, name: str, lease: str | None = None) -> AsyncDevice:
        return AsyncDevice(self, name, await self.call("device", name=name), lease)

    @asynccontextmanager
    async def lease(
        self,
        selector: str,
        duration: str | float = "30m",
        wait: str | float = 0,
        progress: Any = None,
    ) -> AsyncIterator[AsyncLease]:
        wait_s = parse_duration(wait)
        info = await self.call(
            "lease.acquire",
            timeout=wait_s + self.timeout,
            progress=progress,
            selector=selector,
            duration=parse_duration(duration),
            wait=wait_s,
            holder=holder_identity(),
        )
        held = AsyncLease(self, info)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keepalive, held.id, max(float(info["grace"]) / 3, 0.05))
                try:
                    yield held
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(self.timeout):
                try:
                    await self.call("lease.release", id=held.id, who=holder_identity())
                except LeaseNotFound:
                    pass

    async def _keepalive(self, lease_id: str, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            try:
                await self.call("lease.keepalive", ids=[lease_id])
            except LabError:
                pass  # the broker may be restarting; the lease survives it
