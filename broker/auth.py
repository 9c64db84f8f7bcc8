"""Who may connect (DESIGN §12, docs/security.md): the authorized_keys file, the broker's
key pair, and the ZAP handler that maps each CURVE connection's key to an identity.

libzmq asks the ZAP handler (RFC 27) once per connection, during the CURVE handshake, on an
inproc socket of the broker's context. A key that is not in authorized_keys is refused
there: its peer never gets a message through, so it holds no broker state at all. An
accepted connection carries its public key (Z85) as its ZMTP ``User-Id``, which ``Peers``
reads; identity and role are looked up by key at each check, so an edited file applies at
once, and a key taken out of the file acts no more, even on a connection made before.

The file is re-read when its mtime or size changes (checked every second) and on SIGHUP; a
broken edit is logged and the previous entries stay in force. A reload drops no session
whose key stays; the broker ends what a removed key still had open (``on_change``).
"""

from __future__ import annotations

import contextvars
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import trio
import zmq
from zmq.utils import z85

from labctl import keys
from labctl.errors import ConfigError

from .upkeep import trim_heap

log = structlog.get_logger("auth")

ROLES = ("admin", "user", "service", "viewer")
ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by RFC 27
RELOAD_CHECK = 1.0  # seconds between mtime checks of authorized_keys
LOG_REFUSALS = 20  # refused keys logged a minute, at most (the rest are counted)
TRIM_AFTER_REFUSALS = 500  # refused handshakes between two heap trims
DASHBOARD = "dashboard"  # the identity of the dashboard's in-memory viewer key
LAB_SERVICES = "lab-services"  # the identity of `lab up`'s own services (--services-key)


@dataclass(frozen=True)
class KeyEntry:
    """One authorized key: who it is, what role, and (services) which names it registers."""

    identity: str
    role: str
    devices: tuple[str, ...] = ()
    key: str = ""  # Z85 public key


def _reserved(identity: str) -> bool:
    """Names the broker gives itself or its own keys (audit rows say them): no file entry."""
    return identity in (DASHBOARD, LAB_SERVICES, "broker") or identity.startswith("anonymous")


def _entry(raw: Any, where: str, base: Path) -> KeyEntry:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping with key, identity and role")
    unknown = sorted(set(raw) - {"key", "key_file", "identity", "role", "devices"})
    if unknown:
        raise ConfigError(f"{where}: {unknown[0]}: unknown field (check the spelling)")
    identity = raw.get("identity")
    if not isinstance(identity, str) or not identity.strip() or not identity.isprintable():
        raise ConfigError(f"{where}: identity: required, a printable name (like alice)")
    where = f"{where} ({identity})"
    if _reserved(identity.strip()):
        raise ConfigError(
            f"{where}: identity: {identity.strip()!r} is reserved (the dashboard's, lab up's "
            "services', the broker's own or an unauthenticated peer's name)"
        )
    if ("key" in raw) == ("key_file" in raw):
        raise ConfigError(f"{where}: give exactly one of key (Z85 text) or key_file (a .key)")
    if "key" in raw:
        z85_text = keys.z85_key(raw["key"]) if isinstance(raw["key"], str) else None
        if z85_text is None:
            raise ConfigError(
                f"{where}: key: must be a 40-character Z85 public key "
                "(`labctl keys show NAME`), or use key_file"
            )
        key = z85_text.decode()
    else:
        try:
            key = keys.load(base / str(raw["key_file"])).public.decode()
        except ConfigError as exc:
            raise ConfigError(f"{where}: key_file: {exc.message}") from None
    role = raw.get("role")
    if role not in ROLES:
        raise ConfigError(f"{where}: role: must be one of {', '.join(ROLES)} (got {role!r})")
    devices = raw.get("devices")
    if devices is not None and role != "service":
        raise ConfigError(f"{where}: devices: only a service key registers devices")
    if role == "service":
        if not isinstance(devices, list) or not devices:
            raise ConfigError(
                f"{where}: devices: required for a service: the names or globs it may "
                "register (['*'] for any)"
            )
        if not all(isinstance(d, str) and d for d in devices):
            raise ConfigError(f"{where}: devices: must be a list of names or globs")
    return KeyEntry(identity.strip(), role, tuple(devices or ()), key)


def parse(data: Any, source: Path) -> list[KeyEntry]:
    """authorized_keys' entries; ConfigError naming the file, the entry and the field."""
    if data is None:
        return []
    if not isinstance(data, list):
        raise ConfigError(f"{source}: must be a list of entries (- key: ..., identity, role)")
    entries: list[KeyEntry] = []
    by_key: dict[str, KeyEntry] = {}
    by_identity: dict[str, KeyEntry] = {}
    for i, raw in enumerate(data):
        e = _entry(raw, f"{source}: entry {i + 1}", source.parent)
        where = f"{source}: entry {i + 1} ({e.identity})"
        if e.key in by_key:
            raise ConfigError(f"{where}: key: listed already for {by_key[e.key].identity!r}")
        other = by_identity.get(e.identity)
        if other is not None and (other.role, other.devices) != (e.role, e.devices):
            raise ConfigError(
                f"{where}: role: {e.identity!r} has another role or devices in an earlier entry"
            )
        by_key[e.key] = by_identity[e.identity] = e
        entries.append(e)
    return entries


@dataclass
class AuthorizedKeys:
    """The authorized_keys file as the broker uses it: key -> entry, identity -> entry.

    Read from the broker's thread and the ZAP thread; a reload swaps whole dicts, so a
    reader sees the old table or the new one, never half of each.
    """

    path: Path
    by_key: dict[str, KeyEntry] = field(default_factory=dict)
    by_identity: dict[str, KeyEntry] = field(default_factory=dict)
    memory: list[KeyEntry] = field(default_factory=list)  # the dashboard's; survive reloads
    #: called after every install of new tables (in the broker's thread: reloads run there)
    on_change: list[Callable[[], None]] = field(default_factory=list)
    refused: int = 0  # connections refused since start
    _stamp: tuple[int, int] | None = None
    _logged: set[str] = field(default_factory=set)  # keys logged in this minute's window
    _window: float = -1e9
    _lines: int = 0
    _quiet: int = 0  # refusals not logged in this window

    @classmethod
    def load(cls, path: Path) -> AuthorizedKeys:
        """Read ``path`` (a missing file authorizes nobody, with a warning; a broken one
        is a ConfigError: the broker does not start on a file it cannot read)."""
        table = cls(path)
        table.reload(strict=True)
        return table

    def _read(self) -> tuple[list[KeyEntry], tuple[int, int] | None]:
        import yaml

        stamp = self._current_stamp()  # before the read: an edit after it is seen next time
        if stamp is None:
            return [], None
        try:
            text = self.path.read_text()
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot read: {exc.strerror}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{self.path}:{mark.line + 1}" if mark is not None else str(self.path)
            raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
        return parse(data, self.path), stamp

    def reload(self, strict: bool = False) -> bool:
        """Read the file again; True if the table changed. A broken file raises with
        ``strict``, else is logged and the entries in force stay."""
        before = self._current_stamp()
        try:
            entries, stamp = self._read()
        except ConfigError as exc:
            if strict:
                raise
            log.error("authorized_keys not reloaded: keeping the previous keys", error=exc.message)
            # said once per edit, not every second; the stamp from before the read, so a
            # write that was still going on is read again once it has finished
            self._stamp = before
            return False
        if stamp is None and strict:
            log.warning("no authorized_keys file: no key is authorized yet", path=str(self.path))
        self._stamp = stamp
        self._install(entries)
        if not strict:
            log.info("authorized_keys reloaded", path=str(self.path), keys=len(entries))
        return True

    def _install(self, entries: Iterable[KeyEntry]) -> None:
        every = [*entries, *self.memory]
        self.by_identity = {e.identity: e for e in every}
        self.by_key = {e.key: e for e in every}
        for changed in self.on_change:  # e.g. the broker ends what removed keys had open
            changed()

    def _current_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def check(self) -> bool:
        """Reload if the file changed since it was read (a stat, nothing more otherwise)."""
        if self._current_stamp() == self._stamp:
            return False
        return self.reload()

    def add_memory(self, entry: KeyEntry) -> None:
        """An entry that lives only in this process (the dashboard's viewer key)."""
        self.memory.append(entry)
        self._install([e for e in self.by_key.values() if e not in self.memory])

    # -- what Peers and the ZAP handler ask ---------------------------------------------
    def entry(self, identity: str) -> KeyEntry | None:
        """The entry for an identity, None if it is not (any more) listed."""
        return self.by_identity.get(identity)

    def for_key(self, key: str) -> KeyEntry | None:
        return self.by_key.get(key)

    def note_refused(self, key: str, address: str) -> None:
        """Log a refused key: once per key, at most ``LOG_REFUSALS`` lines a minute, then one
        line counting the rest. A flood of fresh random keys costs no log volume."""
        self.refused += 1
        now = time.monotonic()
        if now - self._window >= 60:
            if self._quiet:
                log.warning("refused more keys not in authorized_keys", count=self._quiet)
            self._window, self._lines, self._quiet = now, 0, 0
            self._logged.clear()
        if key in self._logged:
            return
        if self._lines >= LOG_REFUSALS:
            self._quiet += 1
            return
        self._logged.add(key)
        self._lines += 1
        log.warning("refused a key that is not in authorized_keys", key=key, address=address)

    async def watch(self) -> None:
        """Reload on change (checked every second) and on SIGHUP, until cancelled; give
        back the heap refused handshakes leave behind (libzmq's per-connection buffers, in
        its I/O thread's arena), which no handled message would ever trim."""
        trimmed = 0
        async with trio.open_nursery() as nursery:
            if threading.current_thread() is threading.main_thread():
                nursery.start_soon(self._on_sighup)
            while True:
                await trio.sleep(RELOAD_CHECK)
                self.check()
                if self.refused - trimmed >= TRIM_AFTER_REFUSALS:
                    trimmed = self.refused
                    trim_heap()

    async def _on_sighup(self) -> None:
        with trio.open_signal_receiver(signal.SIGHUP) as signals:
            async for _ in signals:
                log.info("SIGHUP: reloading authorized_keys", path=str(self.path))
                self.reload()


# -- the ZAP handler ---------------------------------------------------------------------------
class ZapHandler:
    """Answers libzmq's ZAP requests for one context from a thread, per ZAP domain.

    One ZAP endpoint per context, so brokers sharing a context (tests) share the handler,
    each under its own domain. A request for a domain nobody registered is refused unless
    it is NULL (an open socket's, when libzmq asks at all).
    """

    _by_context: dict[int, ZapHandler] = {}
    _lock = threading.Lock()

    def __init__(self, ctx: zmq.Context[Any]) -> None:
        self.ctx = ctx
        self.domains: dict[str, AuthorizedKeys] = {}
        self._stop_address = f"inproc://labctl-zap-stop-{id(self)}"
        self._ready = threading.Event()
        self._error: Exception | None = None
        context = contextvars.copy_context()  # its log lines carry the process's fields
        self._thread = threading.Thread(
            target=context.run, args=(self._run,), name="labctl-zap", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise ConfigError(f"cannot serve ZAP in this process: {self._error}")

    @classmethod
    def attach(cls, ctx: zmq.Context[Any], domain: str, table: AuthorizedKeys) -> None:
        with cls._lock:
            handler = cls._by_context.get(id(ctx))
            if handler is None:
                handler = cls._by_context[id(ctx)] = cls(ctx)
            handler.domains[domain] = table

    @classmethod
    def detach(cls, ctx: zmq.Context[Any], domain: str) -> None:
        with cls._lock:
            handler = cls._by_context.get(id(ctx))
            if handler is None:
                return
            handler.domains.pop(domain, None)
            if not handler.domains:
                del cls._by_context[id(ctx)]
                handler._stop()

    def _run(self) -> None:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        stop = self.ctx.socket(zmq.PAIR)
        try:
            sock.bind(ZAP_ENDPOINT)
            stop.bind(self._stop_address)
        except zmq.ZMQError as exc:
            self._error = exc
            sock.close(0)
            stop.close(0)
            self._ready.set()
            return
        self._ready.set()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(stop, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                if stop in ready:
                    return
                while True:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    reply = self.answer(frames)
                    if reply is not None:
                        sock.send_multipart(reply)
        except zmq.ContextTerminated:
            return
        finally:
            sock.close(0)
            stop.close(0)

    def answer(self, frames: list[bytes]) -> list[bytes] | None:
        """The reply to one ZAP request (RFC 27): 200 with the key (Z85) as User-Id, or 400."""
        if len(frames) < 8 or frames[1] != b"":
            return None  # not a ZAP request: nobody to answer
        route, _, version, request_id, domain, address, _, mechanism, *credentials = frames
        table = self.domains.get(domain.decode("utf-8", "replace"))
        status, text, user = b"400", b"not authorized", b""
        if version != b"1.0":
            text = b"unsupported ZAP version"
        elif table is None:
            if mechanism == b"NULL":
                status, text = b"200", b"OK"  # an open socket of this process: not ours
        elif mechanism == b"CURVE" and len(credentials) == 1 and len(credentials[0]) == 32:
            key = z85.encode(credentials[0]).decode()
            entry = table.for_key(key)
            if entry is not None:
                status, text, user = b"200", b"OK", key.encode()
            else:
                table.note_refused(key, address.decode("utf-8", "replace"))
        return [route, b"", b"1.0", request_id, status, text, user, b""]

    def _stop(self) -> None:
        if self._error is not None:
            return
        poke = self.ctx.socket(zmq.PAIR)
        poke.setsockopt(zmq.LINGER, 0)
        poke.connect(self._stop_address)
        poke.send(b"")
        self._thread.join(5)
        poke.close(0)


# -- the broker's side ------------------------------------------------------------------------
def is_loopback(endpoint: str) -> bool:
    """True for endpoints nothing off this host can reach: 127/8, ::1, localhost, ipc,
    inproc. A wildcard (``*``, ``0.0.0.0``) or any other address is not."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    return is_loopback_host(rest.rpartition(":")[0])


def is_loopback_host(host: str) -> bool:
    """127/8, ::1 (bracketed or not) or localhost."""
    host = host.strip("[]").lower()
    return host == "localhost" or host == "::1" or host.startswith("127.")


class CurveServer:
    """The broker's CURVE: its key pair, its authorized_keys, its ZAP domain.

    ``serve(sock)`` makes a bound socket (bus ROUTER, events XPUB) a CURVE server whose
    connections the ZAP handler authorizes. ``close`` when the broker stops.
    """

    def __init__(self, ctx: zmq.Context[Any], state: Path, table: AuthorizedKeys) -> None:
        self.ctx, self.table = ctx, table
        pair_path = state / "broker.key_secret"
        if not pair_path.exists():
            keys.generate("broker", state)
            log.info("made the broker's key pair", public=str(state / "broker.key"))
        pair = keys.load(pair_path)
        if pair.secret is None:
            raise ConfigError(f"{pair_path}: holds no secret key")
        self.public, self.secret = pair.public, pair.secret
        self.domain = f"labctl-{os.getpid()}-{id(self)}"
        ZapHandler.attach(ctx, self.domain, table)

    def serve(self, sock: zmq.Socket[Any]) -> None:
        """Call before bind."""
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        sock.setsockopt(zmq.ZAP_DOMAIN, self.domain.encode())

    def authorize_services(self, public_file: Path, names: tuple[str, ...]) -> None:
        """Authorize a key (a ``.key`` file) in memory as role service for ``names``:
        ``lab up``'s own services (the devices of its lab file), whose key it keeps in the
        state directory."""
        key = keys.public_key(str(public_file)).decode()
        self.table.add_memory(KeyEntry(LAB_SERVICES, "service", names, key))

    def viewer_keys(self, identity: str = DASHBOARD) -> keys.ClientKeys:
        """An in-memory key pair with the viewer role (the dashboard's)."""
        pair = keys.ClientKeys.generated(self.public)
        self.table.add_memory(KeyEntry(identity, "viewer", (), pair.public.decode()))
        return pair

    def close(self) -> None:
        ZapHandler.detach(self.ctx, self.domain)


def exposed(settings: Any) -> list[str]:
    """The bus and events addresses the broker binds beyond loopback."""
    return [a for a in (settings.bus, settings.events) if not is_loopback(a)]


def insecure_addresses(settings: Any) -> list[str]:
    """Addresses served beyond loopback WITHOUT keys (``--insecure``): the dashboard's warning."""
    return exposed(settings) if settings.insecure else []


def curve_table(settings: Any) -> AuthorizedKeys | None:
    """authorized_keys if the broker runs CURVE, None if it runs open.

    CURVE is on with ``--curve``, or when bus or events binds beyond loopback; such a bind
    without keys needs ``--insecure`` (ConfigError otherwise), and is logged as a warning.
    """
    beyond = exposed(settings)
    if settings.insecure and settings.curve:
        raise ConfigError("--curve and --insecure contradict each other: give one of them")
    if settings.insecure:
        if beyond:
            log.warning(
                "INSECURE: serving without CURVE beyond loopback: anyone who reaches these "
                "addresses can drive the lab",
                addresses=beyond,
            )
        return None
    if not (settings.curve or beyond):
        return None
    path = settings.authorized_keys or settings.state / "authorized_keys.yaml"
    return AuthorizedKeys.load(Path(path))
