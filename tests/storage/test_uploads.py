"""Uploads through a real broker into a real storage service (mock card): 256 MiB images
raw, gz, xz and zstd end up on the card with the same sha256; bmap writes leave unmapped
ranges untouched; the mux, size and checksum rules hold."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from labctl.errors import DriverError, LabError

from ..harness import LabHarness
from .images import MiB, bmap_xml, cached_images, compress, image_bytes, image_sha256


def card_sha256(card: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(card, "rb") as f:
        left = size
        while left:
            chunk = f.read(min(left, 8 * MiB))
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


@pytest.mark.parametrize("kind", ["raw", "gz", "xz", "zst"])
def test_a_256_mib_upload_lands_on_the_card_with_the_same_sha256(
    kind: str, storage_lab: LabHarness
) -> None:
    image = cached_images()[kind]
    lab = storage_lab.lab()
    seen: list[dict] = []
    with lab.lease("name=sd1") as lease:
        result = lease.storage.write(
            image, sha256=image_sha256(), switch=True, progress=seen.append
        )
    assert result["result"] == "good" and result["sha256"] == image_sha256()
    assert result["compression"] == {"raw": "none", "gz": "gzip", "zst": "zstd"}.get(kind, kind)
    assert card_sha256(storage_lab.root / "sd1.card", 256 * MiB) == image_sha256()
    assert seen and seen[-1]["phase"] == "done" and seen[-1]["bytes"] == 256 * MiB
    info = lab.device("sd1").call("info")
    assert info["last_write"]["result"] == "good"
    assert info["state"] == "off"  # the lease ended: reset switched the card off


def test_flash_verifies_and_leaves_the_card_at_the_dut_only_on_success(
    storage_lab: LabHarness, tmp_path: Path
) -> None:
    img = tmp_path / "v3.img.zst"
    data = image_bytes(16 * MiB, version="3.0")
    img.write_bytes(compress(data, "zst"))
    lab = storage_lab.lab()
    with lab.lease("name=sd1") as lease:
        sd = lease.storage
        r = sd.flash(img, verify=True)
        assert r["verified"] and r["state"] == "dut" and sd.state() == "dut"
        with pytest.raises(LabError, match="sha256 mismatch"):
            sd.flash(img, sha256="1" * 64)
        assert sd.state() == "host"  # failed: the card stays at the host
        assert sd.call("info")["last_write"]["result"] == "failed"


def test_writing_while_the_card_is_at_the_dut_is_refused_naming_switch(
    storage_lab: LabHarness, tmp_path: Path
) -> None:
    img = tmp_path / "small.img"
    img.write_bytes(b"\x01" * MiB)
    lab = storage_lab.lab()
    with lab.lease("name=sd1") as lease:
        lease.storage.dut()
        with pytest.raises(DriverError, match=r"switched to the DUT.*--switch"):
            lease.storage.write(img)
        assert lease.storage.state() == "dut"
        cli = storage_lab.run_cli("storage", "write", "sd1", str(img), "--lease", lease.id)
        assert cli.returncode != 0 and len(cli.stderr.strip().splitlines()) == 1
        assert "--switch" in cli.stderr
        ok = storage_lab.run_cli(
            "storage", "write", "sd1", str(img), "--switch", "--lease", lease.id
        )
        assert ok.returncode == 0, ok.stderr


def test_an_image_larger_than_the_card_is_refused_naming_both_sizes(
    harness: LabHarness, tmp_path: Path
) -> None:
    from .conftest import storage_service

    harness.start_broker()
    harness.start_service(storage_service(harness.root, "tiny", size="1MiB"))
    img = tmp_path / "big.img"
    img.write_bytes(b"\x02" * (2 * MiB))
    with harness.lab().lease("name=tiny") as lease:
        with pytest.raises(
            DriverError, match=r"card|target holds 1048576 bytes.*image is 2097152 bytes"
        ):
            lease.storage.write(img, switch=True)
        assert (harness.root / "tiny.card").read_bytes() == bytes(MiB)  # nothing written


@pytest.mark.parametrize("form", ["raw", "zst"])
def test_bmap_writes_only_mapped_ranges_and_an_uncompressed_upload_sends_only_them(
    form: str, storage_lab: LabHarness, tmp_path: Path
) -> None:
    image = bytearray(32 * MiB)
    for off in range(0, 32 * MiB, 4 * MiB):  # 25% mapped: 1 MiB of every 4
        image[off : off + MiB] = hashlib.sha256(str(off).encode()).digest() * (MiB // 32)
    name = "img.raw" if form == "raw" else "img.raw.zst"
    (tmp_path / name).write_bytes(compress(image, form))
    (tmp_path / "img.raw.bmap").write_text(bmap_xml(image))
    card = storage_lab.root / "sd1.card"
    with open(card, "r+b") as f:
        f.write(b"\xaa" * (40 * MiB))  # a pattern the write must leave where nothing is mapped
    lab = storage_lab.lab()
    with lab.lease("name=sd1") as lease:
        r = lease.storage.write(
            tmp_path / name, switch=True, verify=True, sha256=hashlib.sha256(image).hexdigest()
        )
    assert r["bmap"] and r["bytes"] == 8 * MiB
    if form == "raw":
        assert r["source_bytes"] == 8 * MiB  # only the mapped quarter crossed the bus
    data = card.read_bytes()[: 40 * MiB]
    for off in range(0, 32 * MiB, 4 * MiB):
        assert data[off : off + MiB] == image[off : off + MiB]
        assert data[off + MiB : off + 4 * MiB] == b"\xaa" * (3 * MiB)
    assert data[32 * MiB :] == b"\xaa" * (8 * MiB)


def test_a_corrupt_compressed_upload_names_the_byte_offset(
    storage_lab: LabHarness, tmp_path: Path
) -> None:
    packed = bytearray(compress(image_bytes(16 * MiB), "gz"))
    mid = len(packed) // 2
    packed[mid : mid + 256] = b"\x5a" * 256
    (tmp_path / "bad.img.gz").write_bytes(packed)
    lab = storage_lab.lab()
    with lab.lease("name=sd1") as lease:
        with pytest.raises(DriverError, match=r"corrupt gzip data at compressed byte offset \d+"):
            lease.storage.write(tmp_path / "bad.img.gz", switch=True)
        cli = storage_lab.run_cli(
            "storage", "write", "sd1", str(tmp_path / "bad.img.gz"), "--lease", lease.id
        )
    assert cli.returncode != 0 and "offset" in cli.stderr
    assert lab.device("sd1").call("info")["last_write"]["result"] == "failed"


def test_reading_the_card_back_to_a_local_file(storage_lab: LabHarness, tmp_path: Path) -> None:
    img = tmp_path / "x.img"
    img.write_bytes(b"hello card" * 100_000)
    lab = storage_lab.lab()
    with lab.lease("name=sd1") as lease:
        lease.storage.write(img, switch=True)
        out = storage_lab.run_cli(
            "storage", "read", "sd1", str(tmp_path / "dump"), "--size", "1000000"
        )
        assert out.returncode == 0, out.stderr
    assert (tmp_path / "dump").read_bytes() == img.read_bytes()[:1_000_000]
    refused = storage_lab.run_cli("storage", "read", "sd1", str(tmp_path / "dump2"))
    assert refused.returncode != 0 and "is at off, not the host" in refused.stderr


def test_the_cli_prints_plain_progress_lines_when_not_on_a_terminal(
    harness: LabHarness, tmp_path: Path
) -> None:
    from .conftest import storage_service

    harness.start_broker()
    harness.start_service(storage_service(harness.root, write_rate="16MiB"))  # a slow card
    img = tmp_path / "slow.img"
    img.write_bytes(b"\x03" * (32 * MiB))
    out = harness.run_cli("storage", "flash", "sd1", str(img))
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("write")]
    assert 1 <= len(lines) <= 4, out.stderr  # at most one a second, no carriage returns
    assert "%" in lines[-1] and "MiB/s" in lines[-1] and "\r" not in out.stderr
    assert "card at dut" in out.stdout
