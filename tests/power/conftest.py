"""Real protocol peers for the power driver tests: snmpd, mosquitto, a simulated plug.

Every peer listens on 127.0.0.1 on a free port, keeps its files in a pytest temp dir,
and is stopped by its PID (its process group for snmpd, which forks ``pass_persist``
helpers) when the fixture ends. Readiness is awaited by watching for a log line or a
successful connect, with a deadline, never by a fixed sleep.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ..harness import free_port, wait_until

HERE = Path(__file__).parent

#: SNMPv3 users created in snmpd, covering every auth and privacy protocol at least once.
V3_USERS: dict[str, tuple[str, str]] = {  # user: (auth_protocol, priv_protocol)
    "u_none": ("none", "none"),
    "u_md5": ("MD5", "none"),
    "u_sha": ("SHA", "none"),
    "u_md5_des": ("MD5", "DES"),
    "u_sha_aes": ("SHA", "AES"),
    "u_sha224_aes": ("SHA-224", "AES"),
    "u_sha256_des": ("SHA-256", "DES"),
    "u_sha384_aes": ("SHA-384", "AES"),
    "u_sha512_aes": ("SHA-512", "AES"),
}
AUTH_KEY, PRIV_KEY = "authpass-123", "privpass-456"


def stop_process(
    proc: subprocess.Popen[bytes] | subprocess.Popen[str], group: bool = False
) -> None:
    """SIGTERM, then SIGKILL after 5 s; with ``group`` also whatever it forked."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if group:  # the process was started with start_new_session, so its pgid is its pid
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# -- snmpd ------------------------------------------------------------------------------
@dataclass
class SnmpAgent:
    """A running Debian snmpd with emulated APC / Raritan outlet tables."""

    dir: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"
    env: dict[str, str] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    def outlet(self, table: str, n: int) -> bool:
        path = self.state_dir / f"{table}.{n}"
        return path.exists() and path.read_text().strip() == "1"

    def set_outlet(self, table: str, n: int, on: bool) -> None:
        """Flip an outlet behind the agent's back, like a front-panel button."""
        tmp = self.state_dir / f".{table}.{n}.test"
        tmp.write_text("1" if on else "0")
        tmp.replace(self.state_dir / f"{table}.{n}")

    def cli(self, tool: str, *args: str) -> list[str]:
        """argv for a net-snmp tool against this agent (v2c, private community)."""
        return [tool, "-v2c", "-c", "private", "-t", "1", "-r", "0", "-On",
                f"{self.host}:{self.port}", *args]  # fmt: skip

    def write_config(self) -> Path:
        users = []
        for user, (auth, priv) in V3_USERS.items():
            line = f"createUser {user}"
            if auth != "none":
                line += f" {auth} {AUTH_KEY}"
                if priv != "none":
                    line += f" {priv} {PRIV_KEY}"
            level = "noauth" if auth == "none" else "auth" if priv == "none" else "priv"
            users += [line, f"rwuser {user} {level}"]
        helper = f"{sys.executable} {HERE / 'snmp_outlets.py'} {self.state_dir}"
        conf = self.dir / "snmpd.conf"
        conf.write_text(
            "\n".join(
                [
                    f"agentaddress udp:{self.host}:{self.port}",
                    f"rocommunity public {self.host}",
                    f"rwcommunity private {self.host}",
                    *users,
                    f"pass_persist .1.3.6.1.4.1.318 {helper}",
                    f"pass_persist .1.3.6.1.4.1.13742 {helper}",
                ]
            )
            + "\n"
        )
        return conf

    def start(self, port: int | None = None) -> None:
        """Start snmpd (on ``port``, or a free one) and wait until it serves requests."""
        for d in ("state", "mibs", "persist"):
            (self.dir / d).mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "MIBS": "", "MIBDIRS": str(self.dir / "mibs"),
                    "SNMP_PERSISTENT_DIR": str(self.dir / "persist")}  # fmt: skip
        for _attempt in range(3):
            self.port = port or free_port(socket.SOCK_DGRAM)
            log = self.dir / "snmpd.log"
            log.write_text("")
            self.proc = subprocess.Popen(
                ["snmpd", "-f", "-C", "-c", str(self.write_config()), "-Lf", str(log)],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            proc = self.proc
            wait_until(
                lambda: proc.poll() is not None or "NET-SNMP version" in log.read_text(),  # noqa: B023
                10,
                "snmpd",
            )
            if proc.poll() is None:
                return
            if port:  # a fixed port we must have: give up
                break
        raise RuntimeError(f"snmpd did not start: {(self.dir / 'snmpd.log').read_text()}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, group=True)
            self.proc = None


@pytest.fixture(scope="session")
def snmpd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SnmpAgent]:
    if shutil.which("snmpd") is None:
        pytest.skip("snmpd not installed (apt-get install snmpd snmp)")
    agent = SnmpAgent(tmp_path_factory.mktemp("snmpd"))
    agent.start()
    yield agent
    agent.stop()


@pytest.fixture
def own_snmpd(tmp_path: Path) -> Iterator[SnmpAgent]:
    """An snmpd for one test, which may stop and restart it."""
    agent = SnmpAgent(tmp_path / "snmpd")
    agent.start()
    yield agent
    agent.stop()


# -- mosquitto --------------------------------------------------------------------------
@dataclass
class Broker:
    dir: Path
    port: int = 0
    users: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    tls_port: int = 0  # with ``tls``: a second listener speaking MQTT over TLS
    tls: bool = False

    def start(self, port: int | None = None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        lines = [f"listener {self.port} 127.0.0.1", "persistence false", "user root"]
        if self.tls:
            make_certificates(self.dir)
            self.tls_port = free_port()
            lines += [f"listener {self.tls_port} 127.0.0.1", f"cafile {self.dir / 'ca.pem'}",
                      f"certfile {self.dir / 'server.pem'}", f"keyfile {self.dir / 'server.key'}"]  # fmt: skip
        if self.users:
            pwfile = self.dir / "passwd"
            pwfile.write_text("")
            for user, password in self.users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pwfile), user, password], check=True)
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines += ["allow_anonymous true"]
        conf = self.dir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        with open(self.dir / "mosquitto.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["mosquitto", "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        wait_until(self._accepts, 10, "mosquitto")

    def _accepts(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {(self.dir / 'mosquitto.log').read_text()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


def _broker(path: Path, users: dict[str, str] | None = None, tls: bool = False) -> Broker:
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto not installed (apt-get install mosquitto)")
    broker = Broker(path, users=users or {}, tls=tls)
    broker.start()
    return broker


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    broker = _broker(tmp_path_factory.mktemp("mosquitto"))
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def mosquitto_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A broker that only lets in ``lab``/``s3cret`` and ``plug``/``plugpw``."""
    broker = _broker(tmp_path_factory.mktemp("mosquitto-auth"), {"lab": "s3cret", "plug": "plugpw"})
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def mosquitto_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """Anonymous on ``port``, TLS (certificate for 127.0.0.1 from ``dir/ca.pem``) on ``tls_port``."""
    broker = _broker(tmp_path_factory.mktemp("mosquitto-tls"), tls=True)
    yield broker
    broker.stop()


@pytest.fixture
def own_mosquitto(tmp_path: Path) -> Iterator[Broker]:
    """A broker for one test, which may stop and restart it."""
    broker = _broker(tmp_path / "mosquitto")
    yield broker
    broker.stop()


def make_certificates(d: Path) -> None:
    """A throw-away CA and a server certificate for 127.0.0.1, written as PEM files to ``d``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: str,
        signer: ec.EllipticCurvePrivateKey,
        ca: bool,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
            builder = builder.add_extension(san, critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = cert("labctl test CA", ca_key, "labctl test CA", ca_key, ca=True)
    server = cert("127.0.0.1", key, "labctl test CA", ca_key, ca=False)
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (d / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )  # fmt: skip
    )


# -- simulated Tasmota plug -------------------------------------------------------------
class SimPlug:
    """``labctl.services.simulators.sim_tasmota`` as a child process, driven through stdin."""

    def __init__(self, broker: Broker, topic: str, *extra: str) -> None:
        self.broker, self.topic, self.extra = broker, topic, extra
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> SimPlug:
        argv = [sys.executable, "-m", "labctl.services.simulators.sim_tasmota",
                "--port", str(self.broker.port), "--topic", self.topic, *self.extra]  # fmt: skip
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 15)
        line = self.proc.stdout.readline().strip() if ready else "(nothing)"
        if line != "ready":
            self.kill()
            raise RuntimeError(f"sim plug did not start: {line}")
        return self

    def press(self, what: str = "toggle") -> None:
        """The physical button: ``toggle``, ``on`` or ``off``."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        """Die without a goodbye, so the broker publishes the will (LWT Offline)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    pipe.close()
            self.proc = None


@pytest.fixture
def sim_plug() -> Iterator[Callable[..., SimPlug]]:
    """Start simulated plugs: ``sim_plug(broker, topic, *args)``; all are killed at the end."""
    plugs: list[SimPlug] = []

    def start(broker: Broker, topic: str, *extra: str) -> SimPlug:
        plug = SimPlug(broker, topic, *extra)
        plugs.append(plug)
        return plug.start()

    yield start
    for plug in plugs:
        plug.kill()
