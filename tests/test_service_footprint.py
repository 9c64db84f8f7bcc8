"""What an idle service process carries (DESIGN §13: a standalone idle service under 40 MB).

Resident memory is for bench/memory.py; the modules a service imports are deterministic, so
a dependency that creeps onto the idle path (the CLI, the client SDK, the broker, a driver's
library) fails here, and so does one of the modules its libraries import that it defers
(ssl, asyncio, hmac, ...: services/lazy_imports.py) being loaded after all. A deferred
module still works, imported for real on its first use.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from labctl.errors import ConfigError
from labctl.services.config import parse_service_config
from labctl.services.lazy_imports import UNUSED_AT_IDLE

from .harness import LabHarness, Proc
from .power.conftest import make_certificates

#: modules (and their submodules) no idle mock power service may import
NOT_ON_THE_IDLE_PATH = (
    "click", "labctl.cli", "labctl.broker", "labctl.lab", "labctl.aio", "labctl.streams",
    "labctl.storage", "sqlite3", "hypercorn", "starlette", "pexpect", "serial", "pysnmp",
    "paho", "can", "usb", "opendal", "zstandard", "cryptography", "rich",
)  # fmt: skip

#: `python -m labctl.services CONFIG` that writes sys.modules to OUT when it exits
SERVICE_LISTING_MODULES = """
import atexit, sys
config, out = sys.argv[1:]
atexit.register(lambda: open(out, "w").write("\\n".join(sorted(sys.modules))))
sys.argv = ["labctl.services", config]
from labctl.services.__main__ import main
main()
"""


def _run_a_service(
    harness: LabHarness, workdir: Path, name: str, script: str
) -> tuple[list[str], set[str]]:
    """Run a mock power service through ``script`` until it is online, stop it (SIGTERM: it
    ends cleanly and its atexit hook runs); the modules the script listed, and the files the
    process had mapped (shared libraries: their names) while online."""
    harness.start_broker()
    config = harness.write_config({"service": name, "kind": "power", "driver": "mock"})
    listing = workdir / "modules.txt"
    argv = [sys.executable, "-c", script, str(config), str(listing)]
    service = Proc(argv, workdir / f"{name}.log", harness.env).start()
    harness.procs.append(service)
    harness.wait_online([name])
    maps = Path(f"/proc/{service.pid}/maps").read_text().splitlines()
    mapped = {line.rsplit("/", 1)[1] for line in maps if "/" in line}
    service.stop()
    assert service.popen is not None and service.popen.returncode == 0, service.output()
    return listing.read_text().split(), mapped


def test_an_idle_service_imports_no_cli_sdk_broker_or_driver_library(
    harness: LabHarness, workdir: Path
) -> None:
    modules = set(_run_a_service(harness, workdir, "idle", SERVICE_LISTING_MODULES)[0])
    assert {"labctl.services.runtime", "labctl.services.power.mock"} <= modules
    loaded = sorted(
        m for m in modules if any(m == n or m.startswith(n + ".") for n in NOT_ON_THE_IDLE_PATH)
    )
    assert loaded == [], f"the idle service imported {loaded}"


def test_an_idle_service_loads_neither_openssl_nor_what_else_it_defers(
    harness: LabHarness, workdir: Path
) -> None:
    modules, mapped = _run_a_service(harness, workdir, "idle", SERVICE_LISTING_MODULES)
    deferred = {*UNUSED_AT_IDLE, "_ssl", "_hashlib", "_asyncio", "email"}
    assert sorted(deferred & set(modules)) == [], "the idle service loaded them after all"
    assert sorted(lib for lib in mapped if lib.startswith(("libssl", "libcrypto"))) == []
    assert "libzmq" in " ".join(mapped)  # the listing would not be empty on any process


#: what services/__main__.py does, then every deferred module's first use, through the
#: stand-in a library bound (trio's ssl and idna, structlog's asyncio, labctl.core's
#: secrets, pydantic's importlib.metadata); CERTS: a CA and a certificate for 127.0.0.1
DEFERRED_MODULES_IN_USE = """
import os, sys
os.environ["PYDANTIC_DISABLE_PLUGINS"] = "__all__"
from labctl.services.lazy_imports import DeferredModule, deferred
with deferred():
    from labctl import client
    from labctl.services.launch import run_service
certs = sys.argv[1]
assert not {"ssl", "_ssl", "asyncio", "hmac", "_hashlib", "idna"} & set(sys.modules)
import structlog, trio
from trio import _highlevel_ssl_helpers as trio_ssl

class Hosts(trio.abc.HostnameResolver):  # no DNS: one name
    async def getaddrinfo(self, host, port, *args):
        assert host == b"xn--bcher-kva.example", host  # what trio's idna made of it
        return await trio.socket.getaddrinfo("127.0.0.1", port)

    async def getnameinfo(self, *args):
        raise NotImplementedError

async def echo_over_tls():
    assert isinstance(trio_ssl.ssl, DeferredModule)
    client_side = trio_ssl.ssl.create_default_context(cafile=f"{certs}/ca.pem")  # first use
    import ssl

    assert isinstance(client_side, ssl.SSLContext) and sys.modules["ssl"] is ssl
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(f"{certs}/server.pem", f"{certs}/server.key")
    listeners = await trio.open_ssl_over_tcp_listeners(0, server_side, host="127.0.0.1")
    port = listeners[0].transport_listener.socket.getsockname()[1]

    async def echo(stream):
        await stream.send_all(await stream.receive_some())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, echo, listeners)
        stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=client_side)
        await stream.send_all(b"ping")
        assert await stream.receive_some() == b"ping"
        assert stream.version().startswith("TLS")
        nursery.cancel_scope.cancel()
    trio.socket.set_custom_hostname_resolver(Hosts())
    assert "idna" not in sys.modules
    assert await trio.socket.getaddrinfo("bücher.example", port)

trio.run(echo_over_tls)
import structlog._native as native
assert "asyncio" not in sys.modules
async def log_from_asyncio():
    await structlog.get_logger().ainfo("from asyncio")  # asyncio's executor
    return native.asyncio.get_running_loop()
loop = native.asyncio.run(log_from_asyncio())
import asyncio.events
assert sys.modules["asyncio.events"] is asyncio.events  # one asyncio: its stand-in's
assert isinstance(loop, asyncio.events.AbstractEventLoop)
assert asyncio.AbstractEventLoop is asyncio.events.AbstractEventLoop
from labctl.core import EventFilter
assert "secrets" not in sys.modules
assert len(EventFilter("power.*").token) == 16 and "_hashlib" in sys.modules  # secrets, hmac
from pydantic.plugin import _loader
assert _loader.importlib_metadata.version("trio") == trio.__version__
print("ok")
"""


def test_each_deferred_module_works_on_its_first_use(workdir: Path) -> None:
    make_certificates(workdir)
    run = subprocess.run(
        [sys.executable, "-c", DEFERRED_MODULES_IN_USE, str(workdir)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0 and run.stdout.endswith("ok\n"), run.stdout + run.stderr


#: inside the block, a deferred package's submodule cannot be imported first (it would run
#: before its package, or twice); after it, an import is an ordinary one
SUBMODULE_FIRST = """
import sys
from labctl.services.lazy_imports import deferred
with deferred(("asyncio",)):
    try:
        import asyncio.events
    except ModuleNotFoundError as exc:
        print(exc)
    assert "asyncio.events" not in sys.modules
import asyncio.events
assert asyncio.AbstractEventLoop is asyncio.events.AbstractEventLoop
print("ok")
"""


def test_a_submodule_of_a_deferred_package_imported_first_fails_inside_the_block_only() -> None:
    run = subprocess.run([sys.executable, "-c", SUBMODULE_FIRST], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "No module named 'asyncio.events'; 'asyncio' is not a package\nok\n"


#: a service run the way the fork server runs one (after preload(), in the same process);
#: writes the modules it imported after preload to OUT when it exits
FORKED_SERVICE_LISTING_MODULES = """
import atexit, sys
config, out = sys.argv[1:]
from labctl.services import forkserver
forkserver.preload(["power:mock"])
before = set(sys.modules)
atexit.register(lambda: open(out, "w").write("\\n".join(sorted(set(sys.modules) - before))))
from labctl.services.launch import run_service
run_service(config)
"""


def test_a_forked_service_imports_nothing_its_fork_server_did_not_preload(
    harness: LabHarness, workdir: Path
) -> None:
    """What a child imports after the fork is its own copy: under lab up, memory per service."""
    assert _run_a_service(harness, workdir, "forked", FORKED_SERVICE_LISTING_MODULES)[0] == []


@pytest.mark.parametrize("name", ["pdu1\n", "-pdu1", "pdu 1", "pdu/1", ""])
def test_a_service_name_must_be_letters_digits_and_dashes_to_its_last_character(
    name: str,
) -> None:
    with pytest.raises(ConfigError, match="service: must be letters, digits"):
        parse_service_config({"service": name, "kind": "power", "driver": "mock"}, "s.yaml")


def test_device_names_follow_the_same_rule_and_good_names_pass() -> None:
    good = {"service": "pdu-1.a_b", "kind": "power", "driver": "mock",
            "devices": [{"name": "pdu-1.1"}, {"name": "B2"}]}  # fmt: skip
    assert [d.name for d in parse_service_config(good, "s.yaml").devices] == ["pdu-1.1", "B2"]
    bad = {**good, "devices": [{"name": "ok"}, {"name": "b2\n"}]}
    with pytest.raises(ConfigError, match=r"devices\.1\.name: must be letters"):
        parse_service_config(bad, "s.yaml")
