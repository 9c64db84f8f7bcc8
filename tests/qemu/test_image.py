"""`labctl sim image`: what the image and its bmap hold, checked without booting."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import zstandard

from labctl.bmap import parse_bmap
from labctl.services.simulators.image_outputs import BLOCK
from labctl.services.storage.simimage import find_version


def test_sim_image_writes_a_partitioned_marked_image_with_a_verifiable_bmap(
    tmp_path: Path,
) -> None:
    out = tmp_path / "a.img"
    made = subprocess.run(
        [sys.executable, "-m", "labctl.cli", "sim", "image", str(out), "--version", "4.2",
         "--arch", "aarch64", "--compress", "zstd"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert made.stdout.splitlines()[0].endswith("aarch64 image, LABCTL_IMAGE_VERSION=4.2")
    raw = out.read_bytes()
    # MBR: one bootable FAT16 partition from sector 2048 to the end
    assert raw[510:512] == b"\x55\xaa"
    entry = raw[446:462]
    assert entry[0] == 0x80 and entry[4] == 0x0E
    start = int.from_bytes(entry[8:12], "little")
    sectors = int.from_bytes(entry[12:16], "little")
    assert start == 2048 and (start + sectors) * 512 == len(raw)
    assert raw[start * 512 + 54 : start * 512 + 59] == b"FAT16"
    # the marker simdut finds, early in the image
    assert raw[4096 : 4096 + 25] == b"LABCTL_IMAGE_VERSION=4.2\n"
    assert find_version(str(out)) == "4.2"
    # bmap 2.0: every mapped range's sha256 matches, unmapped blocks are zeros
    bmap = parse_bmap((tmp_path / "a.img.bmap").read_text())
    assert bmap.version == "2.0" and bmap.checksum_type == "sha256"
    assert bmap.image_size == len(raw) and bmap.block_size == BLOCK
    mapped = bytearray(len(raw))
    for offset, length, rng in bmap.spans():
        assert hashlib.sha256(raw[offset : offset + length]).hexdigest() == rng.checksum
        mapped[offset : offset + length] = raw[offset : offset + length]
    assert bytes(mapped) == raw
    assert bmap.mapped_bytes < len(raw)  # the FAT's free space is left out
    # the compressed copy is the same image
    unpacked = zstandard.ZstdDecompressor().stream_reader((tmp_path / "a.img.zst").open("rb"))
    assert unpacked.read() == raw


def test_a_bad_version_is_one_line(tmp_path: Path) -> None:
    made = subprocess.run(
        [sys.executable, "-m", "labctl.cli", "sim", "image", str(tmp_path / "x.img"),
         "--version", "1 0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 2
    assert made.stderr.strip().splitlines() == [
        "error: version '1 0': use letters, digits and . _ + ~ - (at most 64 characters)"
    ]
