"""QEMU boards for the tests: images built once per session, a board as three real services.

Every test here carries the ``qemu`` mark (skip locally with ``-m "not qemu"``); CI runs
them. QEMU is CPU-heavy and these machines have 2 shared cores, so each test boots one
board at a time and every QEMU is killed with its power service at teardown.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labctl import Lab

from ..harness import LabHarness, free_port

BOOT_TIMEOUT = 60  # seconds to login: under TCG on a loaded 2-core machine (2-5 s when idle)
#: QEMU under TCG takes a whole core while it boots: a service may wait for the CPU longer
#: than the default harness heartbeat (0.2 s, gone after 0.6 s of silence) allows; the broker
#: then drops it mid-call ("service went away: heartbeat timeout", seen once in 19 runs)
HEARTBEAT = 0.5


@pytest.fixture(params=["ipc"])
def harness(request: pytest.FixtureRequest, workdir: Path) -> Iterator[LabHarness]:
    h = LabHarness(workdir, transport=request.param, heartbeat=HEARTBEAT)
    yield h
    h.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.qemu)


def login(con: Any, timeout: float = BOOT_TIMEOUT) -> None:
    """Log in as root/labctl on a booting board's console; returns at the shell prompt."""
    con.expect("login: ", timeout=timeout)
    con.sendline("root")
    con.expect("Password: ", timeout=20)
    con.sendline("labctl")
    con.expect("# ", timeout=20)


def card_board(
    harness: LabHarness, board: Any, arch: str, image: Path, side: str = "dut"
) -> tuple[str, Lab]:
    """A board without its storage service: the test plays the card, copying ``image`` to
    the board's disk with the mux at ``side``. Its dut name and a Lab."""
    dut = board(arch, storage=False)
    shutil.copyfile(image, harness.root / f"{dut}.disk")
    (harness.root / f"{dut}.mux").write_text(side + "\n")
    return dut, harness.lab(timeout=10)


def need_qemu(arch: str) -> None:
    binary, package = {
        "x86_64": ("qemu-system-x86_64", "qemu-system-x86"),
        "aarch64": ("qemu-system-aarch64", "qemu-system-arm"),
    }[arch]
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} not found: install the Debian package {package}")


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``images(arch, version)`` -> path of a raw image (+ .bmap, .zst), built once each."""
    from labctl.services.simulators.qemu_image import build_image

    root = tmp_path_factory.mktemp("images")
    built: dict[tuple[str, str], Path] = {}

    def get(arch: str, version: str) -> Path:
        if (arch, version) not in built:
            out = root / f"{arch}-{version}.img"
            build_image(out, version, arch, "zstd")
            built[arch, version] = out
        return built[arch, version]

    return get


def board_services(root: Path, arch: str, dut: str) -> list[dict[str, Any]]:
    """A QEMU board as a physical one is: power + console + storage in one ``dut`` group."""
    port = free_port()
    labels = {"dut": dut, "board": f"qemu-{arch}"}
    return [
        {
            "service": f"{dut}-storage",
            "kind": "storage",
            "driver": "mock",
            "name": f"{dut}-storage",
            "labels": labels,
            "config": {
                "path": str(root / f"{dut}.disk"),
                "size": "64MiB",
                "state_file": str(root / f"{dut}.mux"),
            },
        },
        {
            "service": f"{dut}-power",
            "kind": "power",
            "driver": "qemu",
            "name": f"{dut}-power",
            "labels": labels,
            "config": {
                "machine": arch,
                "disk": str(root / f"{dut}.disk"),
                "mux_file": str(root / f"{dut}.mux"),
                "console_port": port,
            },
        },
        {
            "service": f"{dut}-console",
            "kind": "serial",
            "driver": "pyserial",
            "name": f"{dut}-console",
            "labels": labels,
            "config": {"url": f"socket://127.0.0.1:{port}", "reconnect_interval": 0.2},
        },
    ]


@pytest.fixture
def board(harness: LabHarness) -> Iterator[Any]:
    """``board(arch, storage=True)`` starts one QEMU board's services; returns its dut name.

    Without the storage service the test plays the card itself: it writes the disk file
    and the mux file (``<dut>.disk``, ``<dut>.mux`` in the harness dir).
    """

    def start(arch: str, storage: bool = True) -> str:
        need_qemu(arch)
        dut = f"q{arch[:3]}"
        harness.start_broker()
        for svc in board_services(harness.root, arch, dut):
            if storage or svc["kind"] != "storage":
                harness.start_service(svc)
        return dut

    yield start
