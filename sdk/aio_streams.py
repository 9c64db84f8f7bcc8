"""Streams, consoles and events for the trio SDK, over the same core as the sync ones.

Each stream has its own DEALER and a receiver task in the stream's own nursery (opened by
``async with``), so reads, writes and the verdict of an upload wait on events, never on
polls. Credit, offsets, the close and when to resume are ``core.StreamState``'s; events
are ``core.EventFilter``'s: the sync and trio SDKs cannot drift apart.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio
import zmq
from pexpect import EOF, TIMEOUT

from . import core, protocol
from .client import CONNECT_TIMEOUT, events_address, identity_metadata
from .console import printed_tail
from .errors import BrokerUnreachable, LabError, Timeout
from .keys import ClientKeys, HandshakeWatch, secure
from .keys import apply as apply_keys
from .streams import ACK_TIMEOUT, InputLog, note_epoch
from .triozmq import TrioSocket

if TYPE_CHECKING:
    from .aio import AsyncLab

__all__ = ["EOF", "TIMEOUT", "AsyncByteStream", "AsyncConsole", "AsyncEventStream"]


def _dealer(address: str, keys: ClientKeys | None) -> tuple[TrioSocket, HandshakeWatch]:
    raw: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    watch = secure(raw, keys, address)  # CURVE if the lab has keys; the open watches it
    raw.connect(address)
    return TrioSocket(raw), watch


async def watch_handshake(
    watch: HandshakeWatch, refused: Callable[[BrokerUnreachable], None]
) -> None:
    """Until cancelled (the broker answered): call ``refused`` each time a handshake fails
    for good (a key the broker does not list, no keys for a CURVE broker, keys for an open
    one), so a refusal is told at once, not at the timeout; then stop the watch.

    Run it in the task that waits for the socket's first answer, and cancel it then: this
    task is the monitor's only reader, and nothing is watched once the broker answered."""
    monitor = watch.monitor
    try:
        if monitor is None:
            return
        events = TrioSocket(monitor)
        while True:
            error = watch.heard(await events.recv())
            if error is not None:
                refused(error)
    finally:  # no task waits on the monitor's fd any more: it may close
        watch.stop()


async def first_answer(
    sock: TrioSocket, watch: HandshakeWatch, address: str, timeout: float
) -> list[Any]:
    """The first message on a fresh connection, watching its handshake meanwhile (as
    ``Lab`` does): a refusal raises its one line at once; silence, BrokerUnreachable after
    ``timeout`` (with the handshake's reason when one failed)."""
    got: list[Any] | None = None
    told: list[BrokerUnreachable] = []
    with trio.move_on_after(timeout) as waiting:

        def refused(error: BrokerUnreachable) -> None:
            told.append(error)
            waiting.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_handshake, watch, refused)
            got = await sock.recv()
            nursery.cancel_scope.cancel()
    if got is None:
        error = told[0] if told else watch.error()
        raise error or core.timeout_error(address, None, timeout, False)
    return got


class AsyncByteStream:
    """A byte stream on a device (``async with device.stream("console") as s``)."""

    def __init__(
        self,
        lab: AsyncLab,
        device: str,
        name: str,
        write: bool,
        lease: str | None,
        args: dict[str, Any],
        resume: float = core.RESUME_FOR,
        force: str | None = None,
    ) -> None:
        """``force``: the reason to write to a device in maintenance (as ``ByteStream``)."""
        self.address, self.timeout, self.keys = lab.address, lab.timeout, lab.keys
        self.state = core.StreamState(device, name, write, lease, args, resume, force=force)
        self._sock: TrioSocket | None = None
        self._changed = trio.Event()
        self._failure: LabError | None = None  # a resume that gave up
        self._cancel: trio.CancelScope | None = None  # the receiver's
        self.restarts: list[dict[str, Any]] = []  # as ByteStream.restarts
        input_id = args.get("input_id") if write else None
        self._input = InputLog() if isinstance(input_id, str) else None  # as ByteStream's
        self._opens = 0

    @property
    def writable(self) -> bool:
        return self.state.writable

    @property
    def offset(self) -> int | None:
        return self.state.offset

    @property
    def closed_reason(self) -> str | None:
        return self.state.closed_reason

    # -- life cycle -------------------------------------------------------------------------
    async def __aenter__(self) -> AsyncByteStream:
        await self._open()
        self._nursery_cm = trio.open_nursery()
        nursery = await self._nursery_cm.__aenter__()
        self._cancel = nursery.cancel_scope
        nursery.start_soon(self._receiver)
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        self.close()
        try:
            return await self._nursery_cm.__aexit__(*exc)
        finally:  # the receiver has ended: nobody waits on the socket any more
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    async def _open(self) -> None:
        """Open (or reopen) on a fresh socket; the open's reply is awaited right here."""
        if self._sock is not None:
            self._sock.close()
        sock, watch = _dealer(self.address, self.keys)
        self._sock = sock
        rid, frames = core.Requests().frames(self.state.open_message(), self.timeout)
        try:
            await sock.send(frames)
            wait = min(CONNECT_TIMEOUT, self.timeout)
            frames = await first_answer(sock, watch, self.address, wait)
        finally:
            watch.stop()  # first_answer's watcher has stopped it, unless the send failed
        with trio.move_on_after(self.timeout):
            while True:
                msg = protocol.decode(frames)
                if msg.id == rid:
                    if self._input is not None:
                        self._input.heard = False
                    self.state.opened(core.settle(msg)[1])
                    self._opens += 1
                    return
                self._on_message(msg)
                frames = await sock.recv()
        raise Timeout(f"{self.state.label}: no answer to the open within {self.timeout:g}s")

    async def _resume(self, why: str) -> None:
        deadline = trio.current_time() + self.state.resume_for
        delay = 0.05
        while True:
            try:
                await self._open()
                if self._input is not None:
                    await self._resend_input(why)
                return
            except core.RETRY_OPEN as exc:
                if trio.current_time() >= deadline:
                    self._failure = self.state.lost(why, exc)
                    return
            except LabError as exc:  # lease-required, device-busy, ...: retrying cannot help
                self._failure = self.state.lost(why, exc)
                return
            await trio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _take(self, frames: list[Any]) -> None:
        self._on_message(protocol.decode(frames))

    def _on_message(self, msg: protocol.Message) -> None:
        """One incoming message: input counts and epochs from data meta, then the state."""
        st = self.state
        if msg.mtype == protocol.STREAM_DATA and msg.sid == st.sid:
            meta = protocol.StreamData.parse(msg).meta
            note_epoch(st, meta, self.restarts)
            if self._input is not None:
                self._input.ack(meta)
        st.on_message(msg)

    async def _resend_input(self, why: str) -> None:
        """After a reopen: wait for the service's count of our input, send the rest again
        (as ByteStream), taking messages meanwhile; on doubt the stream fails."""
        assert self._input is not None and self._sock is not None
        input_log = self._input
        with trio.move_on_after(ACK_TIMEOUT):
            while not input_log.heard and self.state.closed_reason is None:
                self._take(await self._sock.recv())
        if not input_log.heard and input_log.pending:
            self._failure = input_log.lost(why, self.state)
            return
        self._failure = input_log.check(why, self.state)
        if self._failure is not None:
            return
        view = memoryview(bytes(input_log.pending))
        while view and self.state.closed_reason is None:
            if self.state.credit <= 0:
                self._take(await self._sock.recv())
                continue
            frames, n = self.state.data_frames(view)
            await self._sock.send(frames, copy=n < 4096)
            view = view[n:]

    async def _receiver(self) -> None:
        st = self.state
        while st.closed_reason is None:
            assert self._sock is not None
            frames = None
            with trio.move_on_after(core.PING_AFTER):
                frames = await self._sock.recv()
            if frames is None:  # idle: does the broker still know the stream?
                self._sock.send_nowait(st.ping_frames())
                continue
            try:
                self._take(frames)
            except LabError:
                continue
            if st.pending_resume is not None:
                why, st.pending_resume = st.pending_resume, None
                await self._resume(why)
            self._wake()
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- reading and writing ----------------------------------------------------------------
    async def read_some(self, timeout: float | None = None) -> bytes:
        """Bytes that arrived; b"" once the stream is closed; TimeoutError if none in time."""
        st = self.state
        with trio.move_on_after(float("inf") if timeout is None else timeout):
            while not st.chunks:
                if self._failure is not None:
                    raise self._failure
                if st.closed_reason is not None:
                    return b""
                await self._changed.wait()
            data, grant = st.take()
            if grant is not None and self._sock is not None:
                await self._sock.send(grant)
            return data
        raise TimeoutError(f"no data on {st.label} within {timeout}s")

    async def write(self, data: bytes) -> None:
        """Send bytes, waiting for credit; the service's typed error if it closed with one."""
        st = self.state
        view = memoryview(data)
        opens = self._opens
        if self._input is not None:
            st.check_writable()
            self._input.add(data)
        while view:
            if self._failure is not None:
                raise self._failure
            st.check_writable()
            if st.credit <= 0:
                await self._changed.wait()
                if self._input is not None and self._opens != opens:
                    return  # the reopen resent all unacknowledged input, this included
                continue
            frames, n = st.data_frames(view)
            assert self._sock is not None
            await self._sock.send(frames, copy=n < 4096)
            view = view[n:]

    async def finish(self, timeout: float | None = None) -> Any:
        """End the data and wait for the service's verdict: its result, or its typed error
        raised (as ``ByteStream.finish``); Timeout after ``timeout`` seconds."""
        st = self.state
        frames = st.end_frames()
        if frames is not None and self._sock is not None:
            await self._sock.send(frames)
        with trio.move_on_after(float("inf") if timeout is None else timeout):
            while st.closed_reason is None:
                await self._changed.wait()
            if self._failure is not None:
                raise self._failure
            return st.verdict()
        raise Timeout(f"{st.label}: no verdict within {timeout:g}s")

    def close(self) -> None:
        """Close from this end (the service sees ``closed by client``); the socket goes
        when ``async with`` ends."""
        frames = self.state.close_frames()
        if frames is not None and self._sock is not None:
            self._sock.send_nowait(frames)
        if self._cancel is not None:
            self._cancel.cancel()
        self._wake()

    def __aiter__(self) -> AsyncByteStream:
        return self

    async def __anext__(self) -> bytes:
        data = await self.read_some(None)
        if not data:
            raise StopAsyncIteration
        return data


class AsyncConsole:
    """pexpect's core for trio: ``expect``, ``expect_exact``, ``send``, ``sendline``,
    ``before``/``after``/``match``; raises ``pexpect.TIMEOUT`` and ``pexpect.EOF``."""

    def __init__(
        self, stream: AsyncByteStream, timeout: float | None = 30, encoding: str | None = "utf-8"
    ) -> None:
        self.stream = stream
        self.timeout = timeout
        self.encoding = encoding
        self.linesep: str | bytes = "\n" if encoding else b"\n"
        self._decoder = codecs.getincrementaldecoder(encoding)("replace") if encoding else None
        self.buffer: Any = "" if encoding else b""
        self.before: Any = None
        self.after: Any = None
        self.match: re.Match[Any] | None = None
        self.eof = False

    async def __aenter__(self) -> AsyncConsole:
        await self.stream.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        return await self.stream.__aexit__(*exc)

    def _text(self, data: bytes) -> Any:
        return self._decoder.decode(data) if self._decoder else data

    async def read_some(self, timeout: float | None = -1) -> Any:
        """What arrived (decoded in text mode); TIMEOUT if nothing did, EOF at the end."""
        if self.buffer:
            out, self.buffer = self.buffer, self.buffer[:0]
            return out
        return self._text(await self._read(timeout))

    async def _read(self, timeout: float | None) -> bytes:
        if self.eof:
            raise EOF("End of stream: the console was closed")
        try:
            data = await self.stream.read_some(self.timeout if timeout == -1 else timeout)
        except TimeoutError:
            raise TIMEOUT("Timeout exceeded.") from None
        if not data:
            self.eof = True
            raise EOF("End of stream: the console was closed")
        return data

    async def expect(self, pattern: Any, timeout: float | None = -1) -> int:
        """Wait for the first of ``pattern`` (a regex, or a list of them) to appear; the
        index of the one that matched earliest."""
        patterns = pattern if isinstance(pattern, list) else [pattern]
        return await self._expect([re.compile(self._coerce(p)) for p in patterns], timeout)

    async def expect_exact(self, pattern: Any, timeout: float | None = -1) -> int:
        patterns = pattern if isinstance(pattern, list) else [pattern]
        return await self._expect(
            [re.compile(re.escape(self._coerce(p))) for p in patterns], timeout
        )

    def _coerce(self, p: Any) -> Any:
        if isinstance(p, re.Pattern):
            return p.pattern
        if self.encoding and isinstance(p, bytes):
            return p.decode(self.encoding)
        if not self.encoding and isinstance(p, str):
            return p.encode()
        return p

    async def _expect(self, patterns: list[re.Pattern[Any]], timeout: float | None) -> int:
        timeout = self.timeout if timeout == -1 else timeout
        deadline = None if timeout is None else trio.current_time() + timeout
        while True:
            found = [
                (m.start(), i, m) for i, p in enumerate(patterns) if (m := p.search(self.buffer))
            ]
            if found:
                _, index, m = min(found, key=lambda f: (f[0], f[1]))
                self.before, self.after, self.match = self.buffer[: m.start()], m.group(), m
                self.buffer = self.buffer[m.end() :]
                return index
            left = None if deadline is None else max(0.0, deadline - trio.current_time())
            try:
                data = await self._read(left)
            except (TIMEOUT, EOF) as exc:  # as pexpect: before = what came, shown in the error
                self.before, self.after, self.match = self.buffer, type(exc), None
                text = printed_tail(f"<AsyncConsole {self.stream.state.label}>", self.buffer)
                raise type(exc)(f"{exc}\n{text}") from None
            self.buffer += self._text(data)

    async def send(self, s: str | bytes) -> int:
        data = s.encode(self.encoding or "utf-8") if isinstance(s, str) else bytes(s)
        await self.stream.write(data)
        return len(data)

    async def sendline(self, s: str | bytes = "") -> int:
        sep = self.linesep
        if isinstance(s, str):
            return await self.send(s + (sep if isinstance(sep, str) else sep.decode()))
        return await self.send(bytes(s) + (sep if isinstance(sep, bytes) else sep.encode()))

    async def sendcontrol(self, char: str) -> int:
        """Ctrl-``char`` (``sendcontrol("c")`` interrupts the shell on the console)."""
        return await self.send(bytes((ord(char.lower()) & 0x1F,)))

    def close(self) -> None:
        self.stream.close()


class AsyncEventStream:
    """A live subscription (``async with lab.event_stream(topic) as events``); iterate it
    or ``await events.next_event(timeout)``. With ``since``, the journal comes first."""

    def __init__(self, lab: AsyncLab, topic: str = "*", since: float | None = None) -> None:
        self.lab = lab
        self.pattern = topic
        self.since = since
        self.filter = core.EventFilter(topic)
        self._backlog: list[dict[str, Any]] = []
        self._sock: TrioSocket | None = None

    async def __aenter__(self) -> AsyncEventStream:
        hello = await self.lab.hello()
        raw: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
        raw.setsockopt(zmq.LINGER, 0)
        raw.setsockopt(zmq.METADATA, identity_metadata())  # subscriptions count per identity
        raw.setsockopt(zmq.SUBSCRIBE, self.filter.prefix)
        apply_keys(raw, self.lab.keys)  # the events XPUB is a CURVE server as the bus is
        raw.connect(events_address(self.lab.address, hello["events"]))
        self._sock = TrioSocket(raw)
        try:
            await self._sync()
            if self.since is not None:
                self._backlog = await self.history(self.since)
        except BaseException:
            self._sock.close()
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._sock is not None:
            self._sock.close()

    async def _sync(self, timeout: float = 5.0) -> None:
        """Live once this returns (ZeroMQ's slow joiner), as ``EventStream._sync``."""
        assert self._sock is not None
        topic = self.filter.sync_topic
        self._sock.sock.setsockopt(zmq.SUBSCRIBE, topic)
        try:
            with trio.move_on_after(timeout):
                while True:
                    await self.lab.call("sync", token=self.filter.token)
                    with trio.move_on_after(0.02 * 5):
                        while (await self._sock.recv())[0] != topic:
                            pass
                        return
            raise Timeout(f"event subscription did not become live within {timeout}s")
        finally:
            self._sock.sock.setsockopt(zmq.UNSUBSCRIBE, topic)

    async def history(self, since: float) -> list[dict[str, Any]]:
        return self.filter.history(await self.lab.history(since, self.pattern))

    async def next_event(self, timeout: float | None = None) -> dict[str, Any]:
        if self._backlog:
            return self._backlog.pop(0)
        assert self._sock is not None
        with trio.move_on_after(float("inf") if timeout is None else timeout):
            while True:
                ev = self.filter.accept(await self._sock.recv())
                if ev is not None:
                    return ev
        raise Timeout(f"no event matching {self.pattern!r} within {timeout}s")

    def __aiter__(self) -> AsyncEventStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await self.next_event()
