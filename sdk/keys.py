"""CurveZMQ keys (DESIGN §12, docs/security.md): where they live, how a socket uses them, and
the one line a keyless or refused connection gets instead of a silent hang.

Certificates are pyzmq's ``zmq.auth`` files: ``NAME.key`` (public) and ``NAME.key_secret``
(both keys, mode 0600). A client speaks CURVE when it is given the broker's public key
(``LABCTL_BROKER_KEY``: Z85 text or a path to a ``.key``); its own key is ``LABCTL_KEY`` (a
name in the config dir or a path), else the config dir's ``$USER`` key. ``zmq.auth`` is
imported only when a certificate is read or written: ``labctl --help`` and an open client
never pay for it.
"""

from __future__ import annotations

import getpass
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from .errors import BrokerUnreachable, ConfigError

#: the environment variables a client reads (docs/security.md)
BROKER_KEY_ENV = "LABCTL_BROKER_KEY"
KEY_ENV = "LABCTL_KEY"
CONFIG_DIR_ENV = "LABCTL_CONFIG_DIR"
Z85_KEY_LENGTH = 40


def config_dir() -> Path:
    """Where a user's keys live: ``$LABCTL_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/labctl``."""
    env = os.environ.get(CONFIG_DIR_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(base) / "labctl"


def default_name() -> str:
    """The key name a user gets when none is given: their login name."""
    return getpass.getuser()


def generate(name: str, directory: Path, force: bool = False) -> tuple[Path, Path]:
    """Write ``directory/NAME.key`` and ``NAME.key_secret`` (0600); return both paths.

    The pair is written in a private temporary directory and moved into place, so the
    secret is never readable by others, not even for a moment. An existing pair is kept
    (ConfigError) unless ``force``.
    """
    import zmq.auth

    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"invalid key name {name!r}: a plain file name, like alice or pdu1")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    if not force and (public.exists() or secret.exists()):
        raise ConfigError(f"{secret} exists already: keep it, or pass --force to replace it")
    with tempfile.TemporaryDirectory(dir=directory, prefix=".keys-") as tmp:
        made_public, made_secret = zmq.auth.create_certificates(tmp, name)
        os.chmod(made_secret, 0o600)
        os.chmod(made_public, 0o644)
        os.replace(made_secret, secret)
        os.replace(made_public, public)
    return public, secret


@dataclass(frozen=True)
class KeyPair:
    """A certificate as read: the public key, and the secret one if the file holds it."""

    public: bytes  # Z85, 40 bytes
    secret: bytes | None
    path: Path


def load(path: Path) -> KeyPair:
    """The certificate at ``path``; ConfigError (one line naming it) if it cannot be used."""
    import zmq.auth

    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        why = "no such file" if not path.exists() else str(exc)
        raise ConfigError(f"{path}: not a usable key file: {why}") from None
    if len(public) != Z85_KEY_LENGTH or (secret is not None and len(secret) != Z85_KEY_LENGTH):
        raise ConfigError(f"{path}: not a usable key file: a key is not 40 Z85 characters")
    if secret is not None and path.stat().st_mode & 0o077:  # as ssh does with its keys
        raise ConfigError(
            f"{path}: a secret key others may read is not used: `chmod 600 {path}` "
            "(or make a new one with `labctl keys generate`)"
        )
    return KeyPair(public, secret, path)


def _resolve(spec: str, base: Path | None) -> Path:
    path = Path(spec).expanduser()
    return path if path.is_absolute() or base is None else base / path


def z85_key(text: str) -> bytes | None:
    """``text`` as a Z85 public key (40 characters of the Z85 alphabet), else None."""
    from zmq.utils import z85

    if len(text) != Z85_KEY_LENGTH:
        return None
    try:
        z85.decode(text.encode("ascii"))
    except (ValueError, KeyError, UnicodeEncodeError, IndexError):
        return None
    return text.encode("ascii")


def public_key(spec: str, base: Path | None = None) -> bytes:
    """A public key from ``spec``: 40 Z85 characters, or a path to a ``.key`` (or
    ``.key_secret``) file, relative to ``base`` if given (Z85 may contain ``/``: a file
    of that name wins)."""
    text = spec.strip()
    key = z85_key(text)
    if key is not None and not _resolve(text, base).exists():
        return key
    return load(_resolve(text, base)).public


def own_key(spec: str | None = None, base: Path | None = None) -> KeyPair:
    """The caller's own key pair: ``spec`` (a name in the config dir, or a path to a
    ``.key_secret``), else ``$LABCTL_KEY``, else the config dir's ``$USER`` key."""
    spec = spec or os.environ.get(KEY_ENV) or default_name()
    if "/" in spec or spec.endswith(".key_secret"):
        path = _resolve(spec, base)
    else:
        path = config_dir() / f"{spec}.key_secret"
    if not path.exists():
        raise ConfigError(
            f"no key at {path}: make one with `labctl keys generate` "
            f"(or point {KEY_ENV} at a .key_secret file)"
        )
    pair = load(path)
    if pair.secret is None:
        raise ConfigError(f"{path}: holds no secret key (give the .key_secret file)")
    return pair


@dataclass(frozen=True)
class ClientKeys:
    """What a CURVE client socket needs: the broker's public key and its own pair."""

    server: bytes
    public: bytes
    secret: bytes

    @classmethod
    def generated(cls, server: bytes) -> ClientKeys:
        """A fresh in-memory pair (the dashboard's viewer key)."""
        public, secret = zmq.curve_keypair()
        return cls(server, public, secret)


def client_keys(
    broker_key: str | None = None, key: str | None = None, base: Path | None = None
) -> ClientKeys | None:
    """The keys a client dials with, or None to run open (no broker key given)."""
    spec = broker_key or os.environ.get(BROKER_KEY_ENV)
    if not spec:
        return None
    server = public_key(spec, base)
    pair = own_key(key, base)
    assert pair.secret is not None
    return ClientKeys(server, pair.public, pair.secret)


# -- handshake outcomes --------------------------------------------------------------------
_WATCHED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
)


_TELLING: list[int] = [  # most telling first
    int(zmq.EVENT_HANDSHAKE_FAILED_AUTH),
    int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL),
    int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL),
]


_DECISIVE = {int(zmq.EVENT_HANDSHAKE_FAILED_AUTH), int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)}


class HandshakeWatch:
    """What the socket's handshakes said, read until the broker first answers.

    A socket monitor (an inproc PAIR fed by libzmq's I/O thread, handshake events only)
    costs nothing per message; ``explain`` drains it without blocking and turns what failed
    since the last good handshake into the one line the user needs (an event loop waits on
    ``monitor`` and hands each event to ``heard``). ``stop`` before the socket closes.
    """

    def __init__(self, sock: zmq.Socket[Any], keys: ClientKeys | None, address: str) -> None:
        self.keys, self.address = keys, address
        self._sock = sock
        self._monitor: zmq.Socket[Any] | None = sock.get_monitor_socket(_WATCHED)
        self._failures: set[int] = set()  # failure events since the last success

    def _drain(self) -> None:
        mon = self._monitor
        while mon is not None:
            try:
                frames = mon.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._note(frames)

    def _note(self, frames: list[bytes]) -> None:
        event = struct.unpack("=h", frames[0][:2])[0]
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._failures.clear()
        else:
            self._failures.add(event)

    def heard(self, frames: list[bytes]) -> BrokerUnreachable | None:
        """For an event loop that waits on ``monitor`` itself (the trio SDK): note one event
        it received; then as ``refused``, without touching the monitor (a read here could
        take the edge the loop's wait is armed on)."""
        self._note(frames)
        return self.error(drain=False) if self._failures & _DECISIVE else None

    def explain(self, drain: bool = True) -> str | None:
        """The reason the broker has not answered, if a handshake failure says it.

        A refusal can also surface as a bare disconnect (the broker closes right after its
        ERROR), so the most telling event since the last success wins. ``drain=False``:
        only what ``heard`` was given (an event loop owns the monitor)."""
        if drain:
            self._drain()
        if not self._failures:
            return None
        event = min(self._failures, key=lambda e: _TELLING.index(e) if e in _TELLING else 9)
        where = f"the broker at {self.address}"
        if self.keys is None:  # an open broker never fails a NULL handshake
            return f"{where} requires CURVE keys: see `labctl keys` ({BROKER_KEY_ENV}, {KEY_ENV})"
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            key = self.keys.public.decode()
            return (
                f"{where} refused key {key}: not authorized"
                " (ask the lab admin to add it to the broker's authorized_keys)"
            )
        if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            return f"{where} does not speak CURVE (it runs open): unset {BROKER_KEY_ENV}"
        return (
            f"{where} dropped the CURVE handshake: is {BROKER_KEY_ENV} its public key, and "
            f"key {self.keys.public.decode()} in its authorized_keys?"
        )

    def error(self, drain: bool = True) -> BrokerUnreachable | None:
        why = self.explain(drain)
        return None if why is None else BrokerUnreachable(why, {"broker": self.address})

    @property
    def monitor(self) -> zmq.Socket[Any] | None:
        """The monitor socket, to poll beside the watched one (None once stopped)."""
        return self._monitor

    def refused(self) -> BrokerUnreachable | None:
        """The error now if a handshake failed for good: the broker's ZAP said no, or the
        two ends speak different mechanisms. A bare drop may be a restart: not decisive."""
        self._drain()
        if self._failures & _DECISIVE:
            return self.error()
        return None

    def stop(self) -> None:
        """The broker answered: stop monitoring (idempotent)."""
        if self._monitor is not None:
            try:
                self._sock.disable_monitor()
            except zmq.ZMQError:  # the socket is closed already
                pass
            self._monitor.close(0)
            self._monitor = None


def apply(sock: zmq.Socket[Any], keys: ClientKeys | None) -> None:
    """Make ``sock`` a CURVE client with ``keys`` (nothing if None); call before connect."""
    if keys is not None:
        sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)


def secure(sock: zmq.Socket[Any], keys: ClientKeys | None, address: str) -> HandshakeWatch:
    """``apply`` the keys, and watch the handshakes: the watch says later why one failed."""
    apply(sock, keys)
    return HandshakeWatch(sock, keys, address)
