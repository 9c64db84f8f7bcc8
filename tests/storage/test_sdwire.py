"""SdWireStorage through real pyusb code on a fake backend, a file standing in for the
card's block device (see fake_sdwire.py for what the fake cannot prove)."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path
from typing import Any

import pytest

from labctl.errors import DriverError
from labctl.services.bridges import usb as usb_bridge
from labctl.services.storage.sdwire import SdWireStorage

from ..drivers.harness import running, trio_test
from .fake_sdwire import FakeSdWire, FakeSdWireBackend


@pytest.fixture(autouse=True)
def _fresh_usb() -> None:
    usb_bridge.forget_all()


def _card(tmp_path: Path, size: int = 8 << 20) -> Path:
    card = tmp_path / "sdcard.img"
    with open(card, "wb") as f:
        f.truncate(size)
    return card


@trio_test
async def test_sdwire_switches_with_ftdi_cbus_requests_and_reads_the_side_back(
    tmp_path: Path,
) -> None:
    mux = FakeSdWire("sdw-1")
    cfg = {"serial": "sdw-1", "storage_device": str(_card(tmp_path)), "fsync": False}
    async with running(SdWireStorage, cfg, backend=FakeSdWireBackend([mux])) as (drv, rec):
        assert await drv.state() == "dut"
        assert await drv.host() == "host"
        assert mux.pins == 0xF1 and (0x40, 0x0B, 0x20F1) in mux.requests
        assert await drv.state() == "host"
        assert await drv.dut() == "dut" and mux.pins == 0xF0
        await drv.off()  # no off on an SD-Wire: parked at the DUT
        assert mux.pins == 0xF0 and await drv.state() == "dut"
        assert "host" in rec.statuses("state")


@trio_test
async def test_sdwire_writes_a_compressed_image_to_its_block_device(tmp_path: Path) -> None:
    card = _card(tmp_path)
    image = b"\x00" * 4096 + b"LABCTL_IMAGE_VERSION=7\n" + bytes(range(256)) * 4096
    src = tmp_path / "img.gz"
    src.write_bytes(gzip.compress(image))
    mux = FakeSdWire("sdw-1")
    cfg = {"storage_device": str(card), "fsync": False, "sync_every": "256KiB"}
    async with running(SdWireStorage, cfg, backend=FakeSdWireBackend([mux])) as (drv, _):
        with pytest.raises(DriverError, match="--switch"):
            await drv.write(f"fs://{src}")
        result = await drv.write(f"fs://{src}", switch=True, verify=True)
        assert result["result"] == "good" and result["compression"] == "gzip"
        assert result["sha256"] == hashlib.sha256(image).hexdigest()
        assert card.read_bytes()[: len(image)] == image
        assert mux.pins == 0xF1  # left at the host; flash would move it to the DUT


@trio_test
async def test_sdwire_without_medium_and_the_wrong_serial_are_one_line_errors(
    tmp_path: Path,
) -> None:
    mux = FakeSdWire("sdw-1")
    cfg = {"storage_device": str(tmp_path / "missing"), "storage_timeout": 0.3}
    async with running(SdWireStorage, cfg, backend=FakeSdWireBackend([mux])) as (drv, _):
        await drv.host()
        with pytest.raises(DriverError, match=r"no medium at the host within 0.3s"):
            await drv.target_path()
    async with running(SdWireStorage, {"serial": "nope"}, backend=FakeSdWireBackend([mux])) as (
        drv,
        _,
    ):
        with pytest.raises(DriverError, match="no SD-Wire with serial 'nope'"):
            await drv.host()


@trio_test
async def test_sdwire_finds_its_card_reader_in_sysfs_next_to_it(tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    (sysfs / "devices/usb1/1-2/1-2.2/host0/block").mkdir(parents=True)
    (sysfs / "block/sdz").mkdir(parents=True)
    (sysfs / "block/sdz/device").symlink_to(sysfs / "devices/usb1/1-2/1-2.2/host0")
    (sysfs / "block/sda").mkdir(parents=True)
    mux = FakeSdWire("sdw-1")
    async with running(SdWireStorage, {"sysfs": str(sysfs)}, backend=FakeSdWireBackend([mux])) as (
        drv,
        _,
    ):
        assert await trio_thread(drv._find_block_device) == "/dev/sdz"


async def trio_thread(fn):  # type: ignore[no-untyped-def]
    import trio

    return await trio.to_thread.run_sync(fn)


def _sdwire_and_image(tmp_path: Path) -> tuple[Any, str]:
    """``running(...)`` of an SD-Wire with a card and no extra config, and a 1 MiB raw
    image's fs:// URI."""
    src = tmp_path / "img"
    src.write_bytes(b"\x05" * (1 << 20))
    cfg = {"storage_device": str(_card(tmp_path)), "fsync": False}
    backend = FakeSdWireBackend([FakeSdWire("sdw-1")])
    return running(SdWireStorage, cfg, backend=backend), f"fs://{src}"


@trio_test
async def test_the_default_sync_every_is_bytes_and_a_write_with_it_works(tmp_path: Path) -> None:
    sdwire, uri = _sdwire_and_image(tmp_path)
    async with sdwire as (drv, _):
        assert drv.config.sync_every == 64 << 20
        assert (await drv.write(uri, switch=True))["result"] == "good"


@trio_test
async def test_a_second_write_while_one_runs_is_refused_as_busy(tmp_path: Path) -> None:
    import trio

    sdwire, uri = _sdwire_and_image(tmp_path)
    async with sdwire as (drv, _):
        results: list[object] = []

        async def write() -> None:
            try:
                results.append((await drv.write(uri, switch=True))["result"])
            except DriverError as exc:
                results.append(str(exc))

        async with trio.open_nursery() as nursery:  # both start before either reads the mux
            nursery.start_soon(write)
            nursery.start_soon(write)
        assert results.count("good") == 1, results
        assert any("busy" in str(r) for r in results), results
