"""What an idle service process carries (DESIGN §13: a standalone idle service under 40 MB).

Resident memory is for bench/memory.py; the modules a service imports are deterministic, so
a dependency that creeps onto the idle path (the CLI, the client SDK, the broker, a driver's
library) fails here. Not listed, because a required library imports them whatever labctl
does: asyncio (structlog's package imports it), ssl and hashlib (trio's), importlib.metadata
(pydantic's plugin loader).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from labctl.errors import ConfigError
from labctl.services.config import parse_service_config

from .harness import LabHarness, Proc

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


def _modules_of_a_service(harness: LabHarness, workdir: Path, name: str, script: str) -> list[str]:
    """Run a mock power service through ``script`` until it is online, stop it (SIGTERM: it
    ends cleanly and its atexit hook runs) and return the modules the script listed."""
    harness.start_broker()
    config = harness.write_config({"service": name, "kind": "power", "driver": "mock"})
    listing = workdir / "modules.txt"
    argv = [sys.executable, "-c", script, str(config), str(listing)]
    service = Proc(argv, workdir / f"{name}.log", harness.env).start()
    harness.procs.append(service)
    harness.wait_online([name])
    service.stop()
    assert service.popen is not None and service.popen.returncode == 0, service.output()
    return listing.read_text().split()


def test_an_idle_service_imports_no_cli_sdk_broker_or_driver_library(
    harness: LabHarness, workdir: Path
) -> None:
    modules = set(_modules_of_a_service(harness, workdir, "idle", SERVICE_LISTING_MODULES))
    assert {"labctl.services.runtime", "labctl.services.power.mock"} <= modules
    loaded = sorted(
        m for m in modules if any(m == n or m.startswith(n + ".") for n in NOT_ON_THE_IDLE_PATH)
    )
    assert loaded == [], f"the idle service imported {loaded}"


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
    assert _modules_of_a_service(harness, workdir, "forked", FORKED_SERVICE_LISTING_MODULES) == []


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
