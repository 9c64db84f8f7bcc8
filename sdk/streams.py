"""Byte streams in the sync SDK: one socket per stream, credit-based flow control, resume.

A ``ByteStream`` is also the ``Transport`` that ``Console`` (pexpect's API) reads from.
What the messages mean (credit, offsets, the close, when to resume) is ``core.StreamState``;
this class only waits on its socket. For serial consoles the service tags data with
offsets, so when the broker restarts underneath it, it opens the stream again from that
offset: nothing is lost or read twice. If the *service* restarted meanwhile its offsets
began again at 0 under a new ``epoch``: the stream then resumes at the new run's oldest
byte and records (``restarts``) and logs what was lost, never reading the wrong bytes.

Input works the same way when the stream has an ``input_id`` (``Device.console()`` gives
writable consoles one): bytes written are kept until the service acknowledges them
(``input`` in its frames' meta), and after a reopen the service says how many it took, so
the rest is sent again, in order: keystrokes typed while the broker was away arrive once
it is back. If that cannot be known (the reopen failed, or more than ``UNACKED_MAX`` bytes
went unacknowledged) the write or read raises StreamClosed instead of losing them quietly.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any, Literal

import zmq

from . import multipart, protocol
from .client import BusClient
from .core import MAX_WRITE, PING_AFTER, RESUME_FOR, RETRY_OPEN, WINDOW, StreamState
from .errors import LabError, StreamClosed, Timeout
from .keys import ClientKeys

if TYPE_CHECKING:
    from .lab import Lab

__all__ = ["WINDOW", "PING_AFTER", "RESUME_FOR", "ByteStream"]

log = logging.getLogger("labctl.streams")

PROBE_TIMEOUT = 3.0  # seconds an idle stream waits for the broker to answer `hello`
ACK_TIMEOUT = 5.0  # seconds a reopened stream with input waits for the service's count
UNACKED_MAX = 1 << 20  # input bytes kept for a resend; older ones cannot be resent


def note_epoch(state: StreamState, meta: dict[str, Any] | None, restarts: list[Any]) -> None:
    """Remember the scrollback epoch a frame names (a reopen sends it back); if the service
    restarted since, append ``{was, epoch, at, lost}`` to ``restarts`` and log it."""
    if not meta or "epoch" not in meta:
        return
    epoch, before = meta["epoch"], state.args.get("epoch")
    state.args["epoch"] = epoch
    restarted = meta.get("restarted")
    if before is None or before == epoch or not isinstance(restarted, dict):
        return
    lost = int(restarted.get("lost") or 0)
    restarts.append({"was": before, "epoch": epoch, "at": state.offset, "lost": lost})
    state.gaps += lost
    log.warning(
        "%s: the serial service restarted (scrollback %s -> %s): output after offset %s "
        "of the old run is lost, and %d bytes of the new run were overwritten; resuming "
        "at the oldest byte kept",
        state.label, before, epoch, state.offset, lost,
    )  # fmt: skip


class InputLog:
    """Input written on a stream with an ``input_id`` that the service has not counted
    yet (``input`` in its frames' meta): what a reopen sends again. Sync and trio share it.
    """

    def __init__(self) -> None:
        self.acked = 0  # input bytes the service said it took (over all reopens)
        self.kept_from = 0  # the input count at pending[0]
        self.pending = bytearray()  # written, not yet counted
        self.heard = False  # a count came since the last (re)open

    def add(self, data: bytes) -> None:
        self.pending += data
        if len(self.pending) > UNACKED_MAX:  # only the newest can be resent
            cut = len(self.pending) - UNACKED_MAX
            del self.pending[:cut]
            self.kept_from += cut

    def ack(self, meta: dict[str, Any] | None) -> None:
        """Take the service's count from a frame's meta, if it has one."""
        taken = (meta or {}).get("input")
        if not isinstance(taken, int) or isinstance(taken, bool):
            return
        self.heard = True
        if taken > self.acked:
            self.acked = taken
            del self.pending[: max(0, taken - self.kept_from)]
            self.kept_from = max(self.kept_from, taken)

    def check(self, why: str, state: StreamState) -> StreamClosed | None:
        """After a reopen's count: StreamClosed if some of what was lost was not kept."""
        if self.acked < self.kept_from:
            return self.lost(why, state, f"{self.kept_from - self.acked} bytes were not kept")
        return None

    def lost(self, why: str, state: StreamState, detail: str = "") -> StreamClosed:
        """Close ``state`` for good: input may have been lost and cannot be resent."""
        n = len(self.pending) + max(0, self.kept_from - self.acked)
        state.closed_reason = f"lost ({why}): {n} bytes written may not have arrived"
        detail = detail or "the service did not say how much of it arrived"
        return StreamClosed(f"stream {state.label} {state.closed_reason} ({detail})")


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
        force: str | None = None,
    ) -> None:
        """``force``: the reason to write to a device in maintenance without a lease
        (journaled by the broker, sent again on each reopen; PROTOCOL.md §8)."""
        self.address = lab.address
        self._keys: ClientKeys | Literal[False] = lab.client.keys or False  # CURVE, or open
        self.state = StreamState(device, name, write, lease, args, resume, frame, force)
        self.device, self.name = device, name
        self._client: BusClient | None = None
        self._opens = 0  # how many times the stream was opened (a reopen resends input)
        input_id = args.get("input_id") if write else None
        self._input = InputLog() if isinstance(input_id, str) else None
        #: scrollback epochs crossed by a resume (the service restarted): ``{was, epoch,
        #: at (offset in the old run), lost (bytes of the new run already overwritten)}``
        self.restarts: list[dict[str, Any]] = []
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
        """Absolute offset after the newest byte received (None if the service tags none)."""
        return self.state.offset

    @property
    def read_offset(self) -> int | None:
        """Absolute offset of the next byte ``read_some`` returns (received bytes not yet
        read excluded); None if the service tags no offsets."""
        if self.state.offset is None:
            return None
        return self.state.offset - sum(len(c) for c in self.state.chunks)

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
        self._client = BusClient(self.address, keys=self._keys)
        self._client.stream_handler = self._on_message
        if self._input is not None:
            self._input.heard = False
        self.state.opened(self._client.request(self.state.open_message()))
        self._opens += 1
        self._last_heard = time.monotonic()

    def _resume(self, why: str) -> None:
        deadline = time.monotonic() + self.state.resume_for
        delay = 0.05
        while True:
            try:
                self._open()
                if self._input is not None:
                    self._resend_input(why, self._input)
                return
            except RETRY_OPEN as exc:
                if time.monotonic() >= deadline:
                    raise self.state.lost(why, exc) from None
            except LabError as exc:  # lease-required, device-busy, ...: retrying cannot help
                raise self.state.lost(why, exc) from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _resend_input(self, why: str, input_log: InputLog) -> None:
        """After a reopen: wait for the service's count of our input, send the rest again."""
        deadline = time.monotonic() + ACK_TIMEOUT
        while not input_log.heard and self.state.closed_reason is None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._pump(left)
        if not input_log.heard and input_log.pending:
            raise input_log.lost(why, self.state)
        failed = input_log.check(why, self.state)
        if failed is not None:
            raise failed
        self._send_data(memoryview(bytes(input_log.pending)), self._opens)

    # -- incoming -----------------------------------------------------------------------
    def _on_message(self, msg: protocol.Message) -> None:
        if msg.mtype == protocol.STREAM_DATA and msg.sid == self.state.sid:
            meta = protocol.StreamData.parse(msg).meta
            if self._input is not None:
                self._input.ack(meta)
            note_epoch(self.state, meta, self.restarts)
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

    def _take_arrived(self) -> None:
        """Before a write: handle what already arrived, so a close the broker sent meanwhile
        (the lease ended, the device's maintenance began or ended) raises from this write
        instead of the bytes going to a route that is gone."""
        if self._client is not None and multipart.events(self._client.sock) & multipart.POLLIN:
            self._pump(0)

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
        """Send bytes, waiting for credit; the service's typed error if it closed with one.

        With an ``input_id``, StreamClosed if the stream had to be reopened and earlier
        input may not have arrived (see the module docstring)."""
        self._take_arrived()
        if self._input is None:
            self._send_data(memoryview(data), None)
            return
        self.state.check_writable()
        self._input.add(data)
        self._send_data(memoryview(data), self._opens)

    def _send_data(self, view: memoryview, opens: int | None) -> None:
        """Send ``view`` as credit allows; stop early if the stream was reopened meanwhile
        (``opens`` changed): the reopen resent all unacknowledged input, this included."""
        st = self.state
        while view:
            st.check_writable()
            if st.credit <= 0:
                self._pump(1.0)
                if opens is not None and self._opens != opens:
                    return
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
