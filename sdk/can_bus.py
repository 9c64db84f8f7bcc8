"""A python-can interface onto a lab device: ``can.Bus(interface="labctl", channel="DEV")``.

Registered through python-can's ``can.interface`` entry point, so any python-can program
(``Notifier``, ``send_periodic``, can-isotp's ``NotifierBasedCanStack``, cantools, ...) runs
against a remote bus unchanged. Frames arrive on the device's ``frames`` stream, filtered
by the service (``set_filters`` reopens it with the new filters): no request per frame.
Sends go out on a second, write-only stream (one message each, no round trip);
``send_periodic`` runs on the service (a period that survives this process's hiccups) and
stops with ``task.stop()``, the bus's shutdown, or the lease's end.

The lease: ``lease=`` (an id), else ``LABCTL_LEASE``, else one is taken on the device for
the bus's lifetime (``receive_only=True``: none, and ``send`` raises). ``broker=`` or
``LABCTL_BROKER`` says where the lab is.

Threads: one thread may wait in ``recv()`` (no timeout) while another calls ``set_filters``
or ``shutdown``; those return within about ``RECV_SLICE`` (the receive stream's socket is
zmq's, usable by one thread at a time, so ``recv`` waits in slices and lets them in between).

What may go wrong: when the lease ends, ``send`` raises ``CanOperationError``; a reader
that falls more than the service's buffer behind loses frames (``bus.lost`` counts them).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import can
from can.broadcastmanager import CyclicSendTaskABC
from can.typechecking import CanFilters

from .can import FrameStream, filters_from_python_can
from .errors import LabError

#: seconds ``recv`` waits on the receive stream before letting ``set_filters``/``shutdown``
#: at it; a frame that arrives within a slice is returned at once, not at its end
RECV_SLICE = 0.1


class LabctlBus(can.BusABC):
    """A lab device's CAN bus (kind ``can``), named by ``channel``."""

    def __init__(
        self,
        channel: Any,
        can_filters: CanFilters | None = None,
        receive_own_messages: bool = False,
        broker: str | None = None,
        lease: str | None = None,
        receive_only: bool = False,
        **kwargs: Any,
    ) -> None:
        from .lab import Lab

        if not isinstance(channel, str) or not channel:
            raise can.CanInitializationError("channel must name a labctl device (kind can)")
        self.channel_info = f"labctl device {channel}"
        self._own = receive_own_messages
        self._lab = Lab(broker)
        self._held: Any = None
        self._rx: FrameStream | None = None
        self._tx: FrameStream | None = None
        self._rx_lock, self._tx_lock = threading.Lock(), threading.Lock()
        self._rx_gate = threading.Lock()  # taken to queue for _rx_lock (see _rx_turn)
        self._filters_sent: list[dict[str, Any]] = []
        try:
            lease_id = lease or os.environ.get("LABCTL_LEASE")
            if lease_id:
                self._lab.attach(lease_id)
            elif not receive_only:
                self._held = self._lab.lease(f"name={channel}")
                lease_id = self._held.id
            self.device = self._lab.device(channel, lease=None if receive_only else lease_id)
            if self.device.kind != "can":
                raise can.CanInitializationError(
                    f"{channel} is a {self.device.kind} device, not can"
                )
            if not receive_only:
                self._tx = self.device.writer()
        except LabError as exc:
            self._close_all()
            raise can.CanInitializationError(f"labctl: {exc.message}") from exc
        except BaseException:
            self._close_all()
            raise
        super().__init__(channel, can_filters=can_filters, **kwargs)  # opens the rx stream

    @property
    def lost(self) -> int:
        return self._rx.lost if self._rx is not None else 0

    @contextmanager
    def _rx_turn(self) -> Iterator[None]:
        """The receive stream to this thread alone (its zmq socket is not thread-safe).
        Callers queue on ``_rx_gate`` first, so at most one waits for ``_rx_lock``: a
        reader that gives it up between slices cannot take it straight back ahead of a
        ``set_filters`` or ``shutdown`` already waiting (``threading.Lock`` is not fair)."""
        with self._rx_gate:
            self._rx_lock.acquire()
        try:
            yield
        finally:
            self._rx_lock.release()

    def _apply_filters(self, filters: CanFilters | None) -> None:
        wanted = filters_from_python_can(filters)  # type: ignore[arg-type]
        with self._rx_turn():
            if self._rx is not None and wanted == self._filters_sent:
                return
            old, self._rx = self._rx, None
            if old is not None:
                old.close()
            self._rx = self.device.frames(wanted, own=self._own)
            self._filters_sent = wanted

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        """Wait in slices of ``RECV_SLICE``, giving up the stream between them, so that
        ``set_filters`` (the next slice reads the new stream) and ``shutdown`` from other
        threads need not wait for a frame. Raises ``CanOperationError`` once the bus is
        shut down, also in a ``recv()`` that was waiting when it was (as python-can's own
        interfaces do on a closed bus), and when the service closed the frames stream."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = RECV_SLICE if deadline is None else max(0.0, deadline - time.monotonic())
            with self._rx_turn():
                rx = self._rx
                if rx is None:
                    raise can.CanOperationError("labctl bus is shut down")
                try:
                    msg = rx.recv(min(left, RECV_SLICE))
                except LabError as exc:
                    raise can.CanOperationError(f"labctl: {exc.message}") from exc
                if msg is None and rx.closed_reason is not None:  # else recv() would spin
                    raise can.CanOperationError(f"labctl: frames stream {rx.closed_reason}")
            if msg is not None:
                msg.channel = self.channel_info.rsplit(" ", 1)[-1]
                return msg, True  # the service applied the filters
            if deadline is not None and time.monotonic() >= deadline:
                return None, True

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        if self._tx is None:
            raise can.CanOperationError("labctl bus opened receive_only: no lease to send with")
        try:
            with self._tx_lock:
                self._tx.send(msg)
        except LabError as exc:
            raise can.CanOperationError(f"labctl: {exc.message}") from exc

    def _send_periodic_internal(
        self,
        msgs: Sequence[can.Message] | can.Message,
        period: float,
        duration: float | None = None,
        autostart: bool = True,
        modifier_callback: Any = None,
    ) -> CyclicSendTaskABC:
        """On the service when it can be (one fixed frame, started now); python-can's own
        thread otherwise (several frames, a modifier callback)."""
        many = not isinstance(msgs, can.Message) and len(msgs) != 1
        if many or modifier_callback is not None or not autostart:
            return super()._send_periodic_internal(
                msgs, period, duration, autostart, modifier_callback
            )
        msg = msgs if isinstance(msgs, can.Message) else msgs[0]
        try:
            task_id = self.device.send_periodic(
                msg.arbitration_id, bytes(msg.data), period, duration,
                extended=msg.is_extended_id, fd=msg.is_fd, brs=msg.bitrate_switch)  # fmt: skip
        except LabError as exc:
            raise can.CanOperationError(f"labctl: {exc.message}") from exc
        return RemotePeriodicTask(self, task_id, msg, period)

    @property  # type: ignore[misc]
    def state(self) -> can.BusState:
        """The service's bus state (read-only: the service owns the bus)."""
        found = str(self.device.state().get("state", "active")).upper()
        return getattr(can.BusState, found, can.BusState.ACTIVE)  # type: ignore[no-any-return]

    def shutdown(self) -> None:
        """Stop periodic tasks, close the streams, release a lease the bus took. Returns
        within about ``RECV_SLICE`` even while another thread waits in ``recv()``; that
        ``recv()`` then raises ``CanOperationError`` ("labctl bus is shut down")."""
        super().shutdown()  # stops periodic tasks
        self._close_all()

    def _close_all(self) -> None:
        with self._rx_turn():  # a recv() in another thread lets us in within one slice
            rx, self._rx = self._rx, None
        for stream in (rx, self._tx):
            if stream is not None:
                try:
                    stream.close()
                except Exception:
                    pass
        self._tx = None
        if self._held is not None:
            try:
                self._held.release()
            except LabError:
                pass
            self._held = None
        self._lab.close()


class RemotePeriodicTask(CyclicSendTaskABC):
    """A periodic send running on the service; ``stop()`` ends it there."""

    def __init__(self, bus: LabctlBus, task_id: str, msg: can.Message, period: float) -> None:
        super().__init__(msg, period)
        self.bus, self.task_id = bus, task_id

    def stop(self) -> None:
        try:
            self.bus.device.stop_periodic(self.task_id)
        except LabError:
            pass  # the lease ended: the service stopped it already
