"""The sync SDK: ``Lab``, device proxies and leases.

with Lab() as lab:
    with lab.lease("board=rpi4") as lease:
        lease.power.on()
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from . import protocol
from .client import BusClient, RequestForgotten, holder_identity
from .durations import parse_duration
from .errors import LabError, LeaseNotFound, MethodNotFound
from .events import EventStream
from .lease_view import LeaseView


class Device:
    """A proxy for one device; its methods come from the interface it registered."""

    def __init__(self, lab: Lab, name: str, info: dict[str, Any], lease: str | None = None) -> None:
        self._lab = lab
        self.name = name
        self.info = info
        self.lease_id = lease

    @property
    def kind(self) -> str:
        return str(self.info.get("kind", ""))

    @property
    def methods(self) -> dict[str, Any]:
        return dict(self.info.get("interface", {}).get("methods", {}))

    def call(self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        return self._lab.client.call_device(self.name, method, args, kwargs, self.lease_id, timeout)

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_"):
            raise AttributeError(method)
        if method not in self.methods:
            raise MethodNotFound(
                f"device {self.name!r} ({self.kind}) has no method {method!r}; "
                f"it has: {', '.join(sorted(self.methods))}"
            )

        def bound(*args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
            return self.call(method, *args, timeout=timeout, **kwargs)

        bound.__name__ = method
        bound.__doc__ = self.methods[method].get("doc")
        return bound

    def stream(
        self, name: str, write: bool | None = None, resume: float = 60.0, **args: Any
    ) -> Any:
        """Open a byte stream (``console``, ``frames``, ``upload``) on this device.

        ``write`` defaults to whether this proxy holds a lease. If the broker restarts or
        the service goes away, the stream reopens where it left off for up to ``resume``
        seconds before it reports the stream closed (0: report at once).
        """
        from .streams import ByteStream

        if write is None:
            write = self.lease_id is not None
        return ByteStream(self._lab, self.name, name, write, self.lease_id, args, resume)

    def console(
        self, since: int | None = None, write: bool | None = None, encoding: str | None = "utf-8"
    ) -> Any:
        """A pexpect-style console over the device's ``console`` stream."""
        from .console import Console

        args = {} if since is None else {"since": since}
        return Console(self.stream("console", write=write, **args), encoding=encoding)

    def __repr__(self) -> str:
        return f"<Device {self.name} kind={self.kind}>"


class Lease(LeaseView):
    """Devices held exclusively until release, expiry, or the holder going silent."""

    def __init__(self, lab: Lab, info: dict[str, Any]) -> None:
        super().__init__(info)
        self._lab = lab
        self.released = False

    def __getitem__(self, name: str) -> Device:
        return Device(self._lab, name, self.device_info(name), lease=self.id)

    def __getattr__(self, kind: str) -> Device:
        if kind.startswith("_") or kind == "info":
            raise AttributeError(kind)
        return self[self.name_of_kind(kind)]

    def extend(self, duration: str | float) -> None:
        self.info = self._lab.client.call(
            "lease.extend", id=self.id, duration=parse_duration(duration), who=holder_identity()
        )

    def release(self, reset: bool = True) -> None:
        if self.released:
            return
        self.released = True
        self._lab._keepalive.forget(self.id)
        try:
            self._lab.client.call("lease.release", id=self.id, reset=reset, who=holder_identity())
        except LeaseNotFound:
            pass  # already ended (expired, or forced): nothing left to give back

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<Lease {self.id} devices={self.devices}>"


class Keepalive:
    """A thread with its own socket that keeps this process's leases alive."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.ids: set[str] = set()
        self.interval = 20.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def add(self, lease_id: str, grace: float) -> None:
        with self._lock:
            self.ids.add(lease_id)
            self.interval = min(self.interval, max(grace / 3, 0.05))
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="labctl-keepalive", daemon=True)
            self._thread.start()

    def forget(self, lease_id: str) -> None:
        with self._lock:
            self.ids.discard(lease_id)

    def _run(self) -> None:
        client = BusClient(self.address, timeout=5.0)
        try:
            while not self._stop.wait(self.interval):
                with self._lock:
                    ids = sorted(self.ids)
                if ids:
                    try:
                        client.call("lease.keepalive", ids=ids)
                    except LabError:
                        client.close()  # a fresh socket after a broker restart
                        client = BusClient(self.address, timeout=5.0)
        finally:
            client.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class Lab:
    """A connection to one lab's broker (``LABCTL_BROKER`` or ``tcp://127.0.0.1:5550``)."""

    def __init__(
        self, broker: str | None = None, timeout: float = protocol.DEFAULT_TIMEOUT
    ) -> None:
        self.client = BusClient(broker, timeout)
        self.address = self.client.address
        self._keepalive = Keepalive(self.address)
        self._welcome: dict[str, Any] | None = None

    def close(self) -> None:
        self._keepalive.stop()
        self.client.close()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def hello(self) -> dict[str, Any]:
        if self._welcome is None:
            self._welcome = self.client.call("hello")
        return self._welcome

    def devices(self, selector: str = "") -> list[dict[str, Any]]:
        return self.client.call("devices", selector=selector)  # type: ignore[no-any-return]

    def device(self, name: str, lease: Lease | str | None = None) -> Device:
        info = self.client.call("device", name=name)
        lease_id = lease.id if isinstance(lease, Lease) else lease
        return Device(self, name, info, lease=lease_id)

    def lease(
        self,
        selector: str,
        duration: str | float = "30m",
        wait: str | float = 0,
        progress: Callable[[dict[str, Any]], None] | None = None,
        keepalive: bool = True,
    ) -> Lease:
        """Lease one free group matching ``selector``; wait in the queue up to ``wait``.

        Raises NoMatch at once if nothing matches, DeviceBusy (``wait=0``) or WaitTimeout.
        With ``keepalive=False`` the lease outlives this process: it lasts until released
        or its end time (what `labctl lease acquire` uses).
        """
        wait_s = parse_duration(wait)
        give_up = time.monotonic() + wait_s
        # The broker reminds queued requests of their position every heartbeat; silence
        # for three heartbeats means it restarted and forgot the queue: ask again.
        idle = 3 * float(self.hello().get("heartbeat", 2.0)) + 1.0 if wait_s > 0 else None
        while True:
            left = max(0.0, give_up - time.monotonic())
            try:
                info = self.client.call(
                    "lease.acquire",
                    timeout=left + self.client.timeout,
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
        if keepalive:
            self._keepalive.add(info["id"], float(info["grace"]))
        return Lease(self, info)

    def attach(self, lease_id: str) -> Lease:
        """Use a lease taken elsewhere (``labctl lease acquire``, ``LABCTL_LEASE``)."""
        info = self.client.call("lease.show", id=lease_id)
        self._keepalive.add(info["id"], float(info["grace"]))
        lease = Lease(self, info)
        return lease

    def events(self, topic: str = "*", since: float | None = None) -> Iterator[dict[str, Any]]:
        """Events whose topic matches the glob; with ``since`` (seconds) the journal first."""
        with EventStream(self, topic) as stream:
            yield from stream.iterate(since=since)

    def event_stream(self, topic: str = "*") -> EventStream:
        return EventStream(self, topic)
