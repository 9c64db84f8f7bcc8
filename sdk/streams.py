"""Byte streams in the sync SDK: one socket per stream, credit-based flow control, resume.

A ``ByteStream`` is also the ``Transport`` that ``Console`` (pexpect's API) reads from.
What the messages mean (credit, offsets, the close, when to resume) is ``core.StreamState``;
this class only waits on its socket. For serial consoles the service tags data with
offsets, so when the broker restarts underneath it, it opens the stream again from that
offset: nothing is lost or read twice.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import zmq

from . import multipart, protocol
from .client import BusClient
from .core import MAX_WRITE, PING_AFTER, RESUME_FOR, RETRY_OPEN, WINDOW, StreamState
from .errors import LabError, Timeout

if TYPE_CHECKING:
    from .lab import Lab

__all__ = ["WINDOW", "PING_AFTER", "RESUME_FOR", "ByteStream"]

PROBE_TIMEOUT = 3.0  # seconds an idle stream waits for the broker to answer `hello`


class ByteStream:
    def __init__(
        self,
        lab: Lab,
        device: str,
        name: str,
        write: bool,
        lease: str | None,
        args: dict[str, Any],
        resume: float = RESUME_FOR,
        frame: int = MAX_WRITE,
    ) -> None:
        self.address = lab.address
        self.state = StreamState(device, name, write, lease, args, resume, frame)
        self.device, self.name = device, name
        self._client: BusClient | None = None
        self._open()

    # the state a caller may look at
    @property
    def sid(self) -> Any:
        return self.state.sid

    @property
    def writable(self) -> bool:
        return self.state.writable

    @property
    def offset(self) -> int | None:
        return self.state.offset

    @property
    def gaps(self) -> int:
        return self.state.gaps

    @property
    def closed_reason(self) -> str | None:
        return self.state.closed_reason

    @property
    def result(self) -> Any:
        return self.state.result

    @property
    def error(self) -> LabError | None:
        return self.state.error

    # -- opening and resuming -----------------------------------------------------------
    def _open(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = BusClient(self.address)
        self._client.stream_handler = self._on_message
        self.state.opened(self._client.request(self.state.open_message()))
        self._last_heard = time.monotonic()

    def _resume(self, why: str) -> None:
        deadline = time.monotonic() + self.state.resume_for
        delay = 0.05
        while True:
            try:
                self._open()
                return
            except RETRY_OPEN as exc:
                if time.monotonic() >= deadline:
                    raise self.state.lost(why, exc) from None
            except LabError as exc:  # lease-required, device-busy, ...: retrying cannot help
                raise self.state.lost(why, exc) from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    # -- incoming -----------------------------------------------------------------------
    def _on_message(self, msg: protocol.Message) -> None:
        if self.state.on_message(msg):
            self._last_heard = time.monotonic()

    def _send(self, frames: list[Any], copy: bool = True) -> None:
        assert self._client is not None
        self._client.sock.send_multipart(frames, copy=copy)

    def _pump(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` for messages and handle them (data, credit, close)."""
        assert self._client is not None
        sock = self._client.sock
        wait = PING_AFTER if timeout is None else min(timeout, PING_AFTER)
        if multipart.events(sock) & multipart.POLLIN or sock.poll(
            math.ceil(wait * 1000), zmq.POLLIN
        ):
            while True:
                try:
                    frames = multipart.recv(sock, multipart.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    self._on_message(protocol.decode(frames))
                except LabError:
                    continue
        elif time.monotonic() - self._last_heard > PING_AFTER:
            # idle: ask the broker whether it still knows this stream (it answers only if
            # not), and whether it is there at all (a killed broker answers nothing)
            self._send(self.state.ping_frames())
            self._probe()
            self._last_heard = time.monotonic()
        if self.state.pending_resume is not None:
            why, self.state.pending_resume = self.state.pending_resume, None
            self._resume(why)

    def _probe(self) -> None:
        """A `hello` round trip on the stream's socket (stream messages that arrive
        meanwhile are handled); silence closes or resumes the stream (StreamState)."""
        assert self._client is not None
        try:
            self._client.request(protocol.Call.of("hello", {}), PROBE_TIMEOUT)
        except Timeout as exc:
            self.state.broker_silent(f"the broker at {self.address} stopped answering ({exc})")

    def wait(self, fds: list[int], timeout: float) -> list[int]:
        """Wait up to ``timeout`` s for stream input or one of ``fds`` (e.g. stdin) to be
        readable; stream messages are taken in (``read_some(0)`` then returns the data),
        and the file descriptors that are readable are returned."""
        assert self._client is not None
        poller = zmq.Poller()
        poller.register(self._client.sock, zmq.POLLIN)
        for fd in fds:
            poller.register(fd, zmq.POLLIN)
        ready = dict(poller.poll(math.ceil(timeout * 1000)))
        self._pump(0)
        return [fd for fd in fds if fd in ready]

    # -- Transport API ------------------------------------------------------------------
    def read_some(self, timeout: float | None = None) -> bytes:
        """Bytes that arrived; b"" once the stream is closed; TimeoutError if none in time."""
        st = self.state
        deadline = None if timeout is None else time.monotonic() + timeout
        while not st.chunks:
            if st.closed_reason is not None:
                return b""
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._pump(remaining)  # with 0, takes only what has already arrived
            if not st.chunks and remaining == 0 and st.closed_reason is None:
                raise TimeoutError(f"no data on {st.label} within {timeout}s")
        data, grant = st.take()
        if grant is not None and self._client is not None:
            self._send(grant)
        return data

    def write(self, data: bytes) -> None:
        """Send bytes, waiting for credit; the service's typed error if it closed with one."""
        st = self.state
        view = memoryview(data)
        while view:
            st.check_writable()
            if st.credit <= 0:
                self._pump(1.0)
                continue
            frames, n = st.data_frames(view)
            self._send(frames, copy=n < 4096)
            view = view[n:]

    def finish(self, timeout: float | None = None) -> Any:
        """End the data (the service's ``receive()`` raises EndOfChannel) and wait for the
        service to close the stream; return its result (None if it gave none).

        Raises the service's typed error (e.g. DriverError, BadArguments), StreamClosed if
        the stream ended without a verdict (the broker or service went away, the lease
        ended), or Timeout after ``timeout`` seconds (None: wait as long as the broker
        still knows the stream). Output the service sent meanwhile stays readable.
        """
        st = self.state
        frames = st.end_frames()
        if frames is not None:
            self._send(frames)
        deadline = None if timeout is None else time.monotonic() + timeout
        while st.closed_reason is None:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise Timeout(f"{st.label}: no verdict within {timeout:g}s")
            self._pump(remaining)
        return st.verdict()

    def close(self) -> None:
        if self._client is None:
            return
        frames = self.state.close_frames()
        if frames is not None:
            self._send(frames)
        self._client.close()
        self._client = None

    def __enter__(self) -> ByteStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self) -> Any:
        while True:
            data = self.read_some(None)
            if not data:
                return
            yield data
