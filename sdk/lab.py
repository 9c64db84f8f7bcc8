"""The sync SDK: ``Lab``, device proxies and leases.

with Lab() as lab:
    with lab.lease("board=rpi4") as lease:
        lease.power.on()
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from . import core, protocol
from .client import BusClient, RequestForgotten, holder_identity
from .durations import parse_duration
from .errors import LabError, LeaseNotFound, LeaseRequired, MethodNotFound, Timeout
from .events import EventStream
from .keys import ClientKeys
from .lease_view import DeviceInfo, LeaseView

if TYPE_CHECKING:
    from .console import Console


class Device:
    """A proxy for one device; its methods come from the interface it registered."""

    def __init__(
        self,
        lab: Lab,
        name: str,
        info: dict[str, Any],
        lease: str | None = None,
        force: str | None = None,
    ) -> None:
        self._lab = lab
        self.name = name
        self.info = info
        self.lease_id = lease
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

    def call(self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Call ``method`` on the device; raises the driver's typed error, Timeout after ``timeout`` s."""
        client = self._lab.client
        return client.call_device(
            self.name, method, args, kwargs, self.lease_id, timeout, self.force
        )

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
        self,
        name: str,
        write: bool | None = None,
        resume: float = 60.0,
        frame_size: int | None = None,
        **args: Any,
    ) -> Any:
        """Open a byte stream (``console``, ``frames``, ``upload``) on this device.

        ``write`` defaults to whether this proxy holds a lease or a ``force`` reason (a
        device in maintenance: the write is forced, journaled, and the broker closes the
        stream when maintenance ends, PROTOCOL.md §8). If the broker restarts or
        the service goes away, the stream reopens where it left off for up to ``resume``
        seconds before it reports the stream closed (0: report at once; right for uploads).
        An upload ends with ``stream.finish(timeout)``: the service's result, or its error.
        ``frame_size``: bytes per data frame written (default 64 KiB; bulk uploads run
        faster with larger frames, e.g. 1 MiB).
        """
        from .core import MAX_WRITE
        from .streams import ByteStream

        if write is None:
            write = self._may_write
        return ByteStream(self._lab, self.name, name, write, self.lease_id, args, resume,
                          frame_size or MAX_WRITE, self.force)  # fmt: skip

    @property
    def _may_write(self) -> bool:
        """Whether streams open writable by default: under a lease, or forced."""
        return self.lease_id is not None or self.force is not None

    def console(
        self, since: int | None = None, write: bool | None = None, encoding: str | None = "utf-8"
    ) -> Console:
        """A pexpect-style console over the device's ``console`` stream, from scrollback
        offset ``since`` (None: new output only); writable if the device is leased or
        forced (``lab.device(name, force="reason")`` on a device in maintenance)."""
        from secrets import token_hex

        from .console import Console

        args: dict[str, Any] = {} if since is None else {"since": since}
        if self._may_write if write is None else write:
            # names this writer across reopens: input lost in a broker restart is resent
            args["input_id"] = token_hex(8)
        return Console(self.stream("console", write=write, **args), encoding=encoding)

    def __repr__(self) -> str:
        return f"<Device {self.name} kind={self.kind}>"


def device_class(kind: str | None) -> type[Device]:
    """The proxy for a kind: the ``CLIENT`` its package declares (a Device subclass for
    kinds with client-side work, such as storage uploads), else Device."""
    from .kinds import client_target, load

    target = client_target(kind)
    return Device if target is None else load(target)


class Lease(LeaseView):
    """Devices held exclusively until release, expiry, or the holder going silent."""

    def __init__(self, lab: Lab, info: dict[str, Any]) -> None:
        super().__init__(info)
        self._lab = lab
        self.released = False

    def __getitem__(self, name: str) -> Device:
        info = self.device_info(name)
        return device_class(info["kind"])(self._lab, name, info, lease=self.id)

    def __getattr__(self, kind: str) -> Device:
        if kind.startswith("_") or kind == "info":
            raise AttributeError(kind)
        return self[self.name_of_kind(kind)]

    def extend(self, duration: str | float) -> None:
        """Push the lease's end back by ``duration`` (``"1h"`` or seconds)."""
        self.info = self._lab.client.call(
            "lease.extend", id=self.id, duration=parse_duration(duration), who=holder_identity()
        )

    def release(self, reset: bool = True) -> None:
        """Give the lease back (once); ``reset=False`` skips the devices' on-release reset."""
        if self.released:
            return
        self.released = True
        self._lab._keepalive.forget(self.id)
        try:
            self._lab.client.call("lease.release", id=self.id, reset=reset, who=holder_identity())
        except LeaseNotFound:
            pass  # already ended (expired, or forced): nothing left to give back

    def uboot(self, **options: Any) -> Any:
        """The board's U-Boot prompt: ``with lease.uboot() as ub: ub.run("printenv")``.

        Power-cycles, stops autoboot, waits for the prompt; options: see ``labctl.uboot``.
        """
        from .uboot import UBoot

        return UBoot(self, **options)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class Keepalive:
    """A thread with its own socket that keeps this process's leases alive."""

    def __init__(self, address: str, keys: ClientKeys | Literal[False] = False) -> None:
        self.address = address
        self.keys = keys
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
        client = BusClient(self.address, timeout=5.0, keys=self.keys)
        try:
            while not self._stop.wait(self.interval):
                with self._lock:
                    ids = sorted(self.ids)
                if ids:
                    try:
                        client.call("lease.keepalive", ids=ids)
                    except LabError:
                        client.close()  # a fresh socket after a broker restart
                        client = BusClient(self.address, timeout=5.0, keys=self.keys)
        finally:
            client.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class Lab:
    """A connection to one lab's broker (``LABCTL_BROKER`` or ``tcp://127.0.0.1:5550``)."""

    def __init__(
        self,
        broker: str | None = None,
        timeout: float = protocol.DEFAULT_TIMEOUT,
        keys: ClientKeys | Literal[False] | None = None,
    ) -> None:
        """``keys``: CURVE keys (``labctl.keys.ClientKeys``; default: from the environment,
        ``LABCTL_BROKER_KEY``/``LABCTL_KEY``, none there means open; False: open)."""
        self.client = BusClient(broker, timeout, keys=keys)
        self.address = self.client.address
        self._keepalive = Keepalive(self.address, self.client.keys or False)
        self._welcome: dict[str, Any] | None = None

    def close(self) -> None:
        """Stop the keepalives and close the connection (leases held are released by expiry)."""
        self._keepalive.stop()
        self.client.close()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def timeout(self) -> float:
        """Seconds a call waits for its reply unless it says otherwise."""
        return self.client.timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        """Seconds a call waits for its reply by default."""
        self.client.timeout = value

    def hello(self) -> dict[str, Any]:
        """The broker's settings: ``events`` address, ``heartbeat``, ``group_label``, ..."""
        if self._welcome is None:
            self._welcome = self.client.call("hello")
        return self._welcome

    def group_label(self) -> str:
        """The label whose value groups one DUT's devices (the broker's ``--group-label``,
        ``dut`` by default); a lease takes a whole group."""
        return str(self.hello().get("group_label") or "dut")

    def group_selector(self, device: str) -> str:
        """A selector for every device of ``device``'s group (``dut=rpi4-01``), or just
        that device when it has no group label."""
        labels = self.client.call("device", name=device).get("labels", {})
        label = self.group_label()
        value = labels.get(label)
        return f"{label}={value}" if value else f"name={device}"

    def devices(self, selector: str = "") -> list[DeviceInfo]:
        """Devices matching ``selector`` (all with ""), with their state: typed
        ``DeviceInfo`` objects that are also the broker's dicts."""
        return [DeviceInfo(d) for d in self.client.call("devices", selector=selector)]

    def device(
        self, name: str, lease: Lease | str | None = None, force: str | None = None
    ) -> Device:
        """A proxy for device ``name``; with ``lease``, mutating calls are made under it.

        ``force`` (a reason) operates a device in maintenance without a lease; the broker
        journals who forced it and why (admins only, PROTOCOL.md §8). Its streams open
        writable by default, forced the same way."""
        info = self.client.call("device", name=name)
        lease_id = lease.id if isinstance(lease, Lease) else lease
        return device_class(info.get("kind"))(self, name, info, lease=lease_id, force=force)

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
        idle = core.requeue_after(float(self.hello().get("heartbeat", 2.0)), wait_s)
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

    def one_shot(
        self,
        device: str,
        method: str,
        *args: Any,
        lease: str | None = None,
        timeout: float | None = None,
        force: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Call ``device.method``; if it is mutating and no ``lease`` is given, lease just
        that device for the call and release it *without* the on-release reset, so
        ``one_shot("pdu1.1", "on")`` leaves the outlet on (what ``labctl power on`` does).
        ``force`` (a reason): call a device in maintenance, no lease taken (journaled).

        Raises LeaseRequired only with a ``lease`` that does not cover the device;
        DeviceBusy when someone else holds it; InMaintenance in maintenance without force.
        """
        if force is not None:
            dev = self.device(device, lease=lease, force=force)
            return dev.call(method, *args, timeout=timeout, **kwargs)
        try:
            return self.device(device, lease=lease).call(method, *args, timeout=timeout, **kwargs)
        except LeaseRequired:
            if lease is not None:
                raise
        held = self.lease(f"name={device}", duration=60 + (timeout or self.timeout))
        try:
            return self.device(device, lease=held).call(method, *args, timeout=timeout, **kwargs)
        finally:
            held.release(reset=False)

    @contextmanager
    def write_access(
        self, device: str, lease: str | Lease | None = None, duration: str | float = "12h"
    ) -> Iterator[Lease]:
        """A lease to write to ``device`` with (e.g. its console): ``lease`` if given
        (attached, left held on exit), else a temporary lease on the device's whole group
        (so the same lease can power-cycle the board), released on exit without the
        on-release reset: leaving a console must not switch the board off.

        Raises DeviceBusy at once when the group is held by someone else.
        """
        if isinstance(lease, Lease):
            yield lease
            return
        if lease is not None:
            yield self.attach(lease)
            return
        held = self.lease(self.group_selector(device), duration=duration)
        try:
            yield held
        finally:
            held.release(reset=False)

    # -- leases by id (the CLI's and other tools' view) ---------------------------------
    def leases(self) -> dict[str, Any]:
        """``{leases: [public view], queue: [{position, selector, holder, since}]}``."""
        return self.client.call("lease.list")  # type: ignore[no-any-return]

    def lease_info(self, lease: str) -> dict[str, Any]:
        """A lease by id (its full description) or by public ref (its public view)."""
        return self.client.call("lease.show", id=lease)  # type: ignore[no-any-return]

    def extend_lease(self, lease_id: str, duration: str | float) -> dict[str, Any]:
        """Push a lease's end back by ``duration``; its new description."""
        return self.client.call(  # type: ignore[no-any-return]
            "lease.extend", id=lease_id, duration=parse_duration(duration), who=holder_identity()
        )

    def release_lease(self, lease: str, force: bool = False, reason: str = "") -> None:
        """Give a lease back by id; an admin ends anyone's by ref with ``force`` and a
        ``reason`` (kept in the audit journal). LeaseNotFound if it is not active."""
        self._keepalive.forget(lease)
        self.client.call("lease.release", id=lease, force=force, reason=reason,
                         who=holder_identity())  # fmt: skip

    # -- administration -----------------------------------------------------------------
    def set_health(self, device: str, health: str, reason: str = "") -> dict[str, Any]:
        """Mark a device ``good``, ``maintenance`` or ``bad``; only ``good`` ones are
        leased. The reason lands in the audit journal."""
        return self.client.call(  # type: ignore[no-any-return]
            "health", name=device, health=health, reason=reason, who=holder_identity()
        )

    def remove_device(self, device: str) -> dict[str, Any]:
        """Forget an offline, unleased device (its service stopped or was renamed); the
        broker journals it. DeviceBusy while it is online or leased, DeviceNotFound."""
        return self.client.call("device.remove", name=device)  # type: ignore[no-any-return]

    def history(self, since: float = 3600, topic: str = "*", limit: int = 10000) -> list[Any]:
        """Journaled events of the last ``since`` seconds matching the topic glob, oldest
        first: ``[{seq, ts, topic, body}]``."""
        return self.client.call(  # type: ignore[no-any-return]
            "events", since=since, topic=topic, limit=limit
        )

    def events(
        self, topic: str = "*", since: float | None = None, timeout: float | None = None
    ) -> Iterator[dict[str, Any]]:
        """Events whose topic matches the glob; with ``since`` (seconds) the journal first.

        With ``timeout``, the iteration ends once no matching event came for that many
        seconds (so ``for ev in lab.events("lease.*", timeout=5)`` cannot hang a script).
        """
        with EventStream(self, topic) as stream:
            if since is not None:
                yield from stream.history(since)
            while True:
                try:
                    yield stream.next_event(timeout)
                except Timeout:
                    if timeout is None:
                        raise
                    return

    def event_stream(self, topic: str = "*") -> EventStream:
        """A live subscription to events matching ``topic`` (``with`` closes it)."""
        return EventStream(self, topic)
