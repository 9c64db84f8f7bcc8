"""What ``labctl sim image`` writes beside a raw image: its ``.bmap`` and a compressed copy.

The bmap is bmaptool's format 2.0 (sha256 per range), which ``labctl.bmap`` and bmaptool
both read: blocks that are all zeros are left out, so a writer skips them.
"""

from __future__ import annotations

import hashlib
import lzma
from pathlib import Path

BLOCK = 4096
ZERO = bytes(BLOCK)
SUFFIX = {"zstd": ".zst", "xz": ".xz"}


def mapped_ranges(path: Path) -> list[tuple[int, int, str]]:
    """(first block, last block, sha256) of each run of blocks holding any non-zero byte."""
    ranges: list[tuple[int, int, str]] = []
    first = -1
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        block_no = 0
        while True:
            chunk = f.read(BLOCK * 256)
            if not chunk:
                break
            for at in range(0, len(chunk), BLOCK):
                block = chunk[at : at + BLOCK]
                if block.count(0) != len(block):  # holds data
                    if first < 0:
                        first, digest = block_no, hashlib.sha256()
                    digest.update(block)
                elif first >= 0:
                    ranges.append((first, block_no - 1, digest.hexdigest()))
                    first = -1
                block_no += 1
    if first >= 0:
        ranges.append((first, block_no - 1, digest.hexdigest()))
    return ranges


def write_bmap(image: Path, bmap: Path | None = None) -> Path:
    """Write ``IMAGE.bmap`` (format 2.0, sha256) and return its path."""
    bmap = bmap or image.with_name(image.name + ".bmap")
    size = image.stat().st_size
    ranges = mapped_ranges(image)
    blocks = (size + BLOCK - 1) // BLOCK
    mapped = sum(last - first + 1 for first, last, _ in ranges)
    lines = [
        '<?xml version="1.0" ?>',
        "<!-- written by labctl sim image; format: bmaptool 2.0 -->",
        '<bmap version="2.0">',
        f"    <ImageSize> {size} </ImageSize>",
        f"    <BlockSize> {BLOCK} </BlockSize>",
        f"    <BlocksCount> {blocks} </BlocksCount>",
        f"    <MappedBlocksCount> {mapped} </MappedBlocksCount>",
        "    <ChecksumType> sha256 </ChecksumType>",
        f"    <BmapFileChecksum> {'0' * 64} </BmapFileChecksum>",
        "    <BlockMap>",
        *(
            f'        <Range chksum="{sha}"> {f if f == last else f"{f}-{last}"} </Range>'
            for f, last, sha in ranges
        ),
        "    </BlockMap>",
        "</bmap>",
        "",
    ]
    text = "\n".join(lines)
    # bmaptool's file checksum: over the file with the checksum field itself zeroed
    text = text.replace("0" * 64, hashlib.sha256(text.encode()).hexdigest(), 1)
    bmap.write_text(text)
    return bmap


def compress(image: Path, how: str) -> Path:
    """Write ``IMAGE.zst`` or ``IMAGE.xz`` beside the image and return its path."""
    out = image.with_name(image.name + SUFFIX[how])
    tmp = out.with_name(out.name + ".tmp")
    with open(image, "rb") as src, open(tmp, "wb") as dst:
        if how == "zstd":
            import zstandard

            cctx = zstandard.ZstdCompressor(level=9, threads=-1)
            cctx.copy_stream(src, dst)
        else:
            with lzma.LZMAFile(dst, "wb", preset=3) as xz:
                while chunk := src.read(1 << 20):
                    xz.write(chunk)
    tmp.replace(out)
    return out
