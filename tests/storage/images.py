"""Test images: generated once, deterministic, cached between runs (cheap on 2 cores).

A 256 MiB image is mostly zeros with 64 KiB of pseudo-random data every 4 MiB and a
version marker, so every compressor has real work without taking minutes.
"""

from __future__ import annotations

import bz2
import hashlib
import lzma
import os
import random
import zlib
from pathlib import Path

import zstandard

CACHE = Path(os.environ.get("LABCTL_TEST_IMAGES", f"/tmp/labctl-test-images-{os.getuid()}-v1"))
MiB = 1 << 20


def image_bytes(size: int = 256 * MiB, version: str = "2.0", seed: int = 1) -> bytearray:
    rnd = random.Random(seed)
    buf = bytearray(size)
    for off in range(0, size, 4 * MiB):
        buf[off : off + 64 * 1024] = rnd.randbytes(64 * 1024)
    marker = f"LABCTL_IMAGE_VERSION={version}\n".encode()
    buf[MiB : MiB + len(marker)] = marker
    return buf


def compress(data: bytes | bytearray, kind: str) -> bytes:
    if kind == "gz":
        c = zlib.compressobj(1, zlib.DEFLATED, 31)
        return c.compress(data) + c.flush()
    if kind == "xz":
        return lzma.compress(bytes(data), preset=0)
    if kind == "bz2":
        return bz2.compress(bytes(data), 1)
    if kind == "zst":
        return zstandard.ZstdCompressor(level=1).compress(data)
    return bytes(data)


def cached_images(kinds: tuple[str, ...] = ("raw", "gz", "xz", "zst")) -> dict[str, Path]:
    """The 256 MiB image in each form, and its sha256 in ``CACHE/sha256``."""
    CACHE.mkdir(parents=True, exist_ok=True)
    out = {k: CACHE / f"img256.{k}" for k in kinds}
    missing = [k for k, p in out.items() if not p.exists()]
    if missing or not (CACHE / "sha256").exists():
        data = image_bytes()
        (CACHE / "sha256").write_text(hashlib.sha256(data).hexdigest())
        for k in missing:
            tmp = out[k].with_suffix(".tmp")
            tmp.write_bytes(compress(data, k))
            tmp.replace(out[k])
    return out


def image_sha256() -> str:
    cached_images()
    return (CACHE / "sha256").read_text().strip()


def bmap_xml(image: bytes | bytearray, block: int = 4096, version: str = "2.0") -> str:
    """A bmap of ``image`` mapping every block that is not all zeros (what bmaptool does
    for a sparse file), with per-range sha256 (2.x) or sha1 (1.x)."""
    zero = bytes(block)
    nblocks = (len(image) + block - 1) // block
    ranges: list[tuple[int, int]] = []
    for i in range(nblocks):
        if image[i * block : (i + 1) * block] != zero[: len(image[i * block : (i + 1) * block])]:
            if ranges and ranges[-1][1] == i - 1:
                ranges[-1] = (ranges[-1][0], i)
            else:
                ranges.append((i, i))
    algo = "sha256" if version.startswith("2") else "sha1"
    lines = []
    mapped = 0
    for a, b in ranges:
        chunk = image[a * block : min((b + 1) * block, len(image))]
        mapped += b - a + 1
        digest = hashlib.new(algo, chunk).hexdigest()
        attr = "chksum" if version.startswith("2") else "sha1"
        text = f"{a}-{b}" if b != a else f"{a}"
        lines.append(f'        <Range {attr}="{digest}"> {text} </Range>')
    head = f'<?xml version="1.0" ?>\n<bmap version="{version}">\n'
    head += f"    <ImageSize> {len(image)} </ImageSize>\n    <BlockSize> {block} </BlockSize>\n"
    head += f"    <BlocksCount> {nblocks} </BlocksCount>\n    <MappedBlocksCount> {mapped} </MappedBlocksCount>\n"
    if version.startswith("2"):
        head += "    <ChecksumType> sha256 </ChecksumType>\n"
    return head + "    <BlockMap>\n" + "\n".join(lines) + "\n    </BlockMap>\n</bmap>\n"
