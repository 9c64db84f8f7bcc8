"""The image pipeline without a bus: bmap parsing, magic-byte decompression with bounded
memory, corrupt and truncated sources named by offset, size checks, sha256 and verify."""

from __future__ import annotations

import hashlib
import io
import os
import resource
import threading
from pathlib import Path

import pytest
import zstandard

from labctl.bmap import detect_compression, parse_bmap
from labctl.errors import BadArguments
from labctl.services.storage.pipeline import (
    CountingReader,
    ImageError,
    ImageWriter,
    Progress,
    WritePlan,
)

from .images import bmap_xml, compress, image_bytes

MiB = 1 << 20


def write(
    data: bytes, target: Path, size: int = 16 * MiB, **plan: object
) -> tuple[object, ImageWriter]:
    with open(target, "wb") as f:
        f.truncate(size)
    fd = os.open(target, os.O_RDWR)
    try:
        writer = ImageWriter(fd, size, WritePlan(source="t", **plan), Progress(), threading.Event())  # type: ignore[arg-type]
        written = writer.run(CountingReader(io.BytesIO(data), threading.Event()))
        if writer.plan.verify:
            writer.verify(written)
        return written, writer
    finally:
        os.close(fd)


@pytest.mark.parametrize("kind", ["raw", "gz", "xz", "bz2", "zst"])
def test_each_compression_is_found_by_its_magic_bytes_and_written(
    kind: str, tmp_path: Path
) -> None:
    image = bytes(image_bytes(8 * MiB))
    packed = compress(image, kind)
    assert detect_compression(packed[:6]) == {"raw": "none", "gz": "gzip", "zst": "zstd"}.get(
        kind, kind
    )
    written, _ = write(packed, tmp_path / "card", verify=True)
    assert written.sha256 == hashlib.sha256(image).hexdigest()  # type: ignore[attr-defined]
    assert (tmp_path / "card").read_bytes()[: len(image)] == image


def test_concatenated_gzip_members_are_one_image(tmp_path: Path) -> None:
    a, b = os.urandom(100_000), os.urandom(50_000)
    written, _ = write(compress(a, "gz") + compress(b, "gz"), tmp_path / "card")
    assert written.image_bytes == len(a) + len(b)  # type: ignore[attr-defined]


def test_a_corrupt_gzip_source_names_the_byte_offset(tmp_path: Path) -> None:
    packed = bytearray(compress(os.urandom(2 * MiB), "gz"))
    packed[len(packed) // 2 : len(packed) // 2 + 64] = b"\xff" * 64
    with pytest.raises(ImageError, match=r"corrupt gzip data at compressed byte offset \d+") as exc:
        write(bytes(packed), tmp_path / "card")
    assert 0 <= exc.value.details["offset"] <= len(packed)


@pytest.mark.parametrize("kind", ["gz", "xz", "zst"])
def test_a_truncated_source_says_where_it_ends(kind: str, tmp_path: Path) -> None:
    packed = compress(os.urandom(MiB), kind)
    cut = packed[: len(packed) - 1000]
    with pytest.raises(ImageError, match=rf"(truncated|corrupt) \w+ .*offset {len(cut)}"):
        write(cut, tmp_path / "card")


def test_a_zstd_bomb_is_decoded_in_bounded_memory_and_refused_by_size(tmp_path: Path) -> None:
    # 1 GiB of zeros in one frame without a declared size: a few KiB of input
    cctx = zstandard.ZstdCompressor(level=19, write_content_size=False)
    chunks = cctx.compressobj()
    zero = bytes(64 * MiB)
    bomb = b"".join(chunks.compress(zero) for _ in range(16)) + chunks.flush()
    assert len(bomb) < 64 * 1024
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(
        ImageError, match=r"does not fit: the target holds 16777216 bytes .* at least"
    ):
        write(bomb, tmp_path / "card")
    grew_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grew_kib < 200 * 1024, f"decoding the bomb grew RSS by {grew_kib} KiB"


def test_an_image_bigger_than_the_target_is_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(
        ImageError, match=r"target holds 1048576 bytes \(1.0 MiB\), the image is 2097152"
    ):
        write(bytes(2 * MiB), tmp_path / "card", size=MiB, image_size=2 * MiB)


def test_sha256_mismatch_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="sha256 mismatch: expected 00+"):
        write(b"x" * 1000, tmp_path / "card", sha256="0" * 64)


@pytest.mark.parametrize("version", ["2.0", "1.4"])
def test_bmap_parser_reads_format_1_and_2(version: str) -> None:
    image = bytearray(64 * 4096)
    image[4096 * 3 : 4096 * 5] = b"\x01" * 8192
    image[4096 * 9] = 7
    bmap = parse_bmap(bmap_xml(image, version=version))
    assert bmap.image_size == len(image) and bmap.block_size == 4096
    assert [(r.first, r.last) for r in bmap.ranges] == [(3, 4), (9, 9)]
    assert bmap.mapped_bytes == 3 * 4096
    assert bmap.checksum_type == ("sha256" if version == "2.0" else "sha1")


def test_bmap_errors_name_what_is_wrong() -> None:
    with pytest.raises(BadArguments, match="format version '3.0'"):
        parse_bmap('<bmap version="3.0"></bmap>')
    with pytest.raises(BadArguments, match="missing <BlockSize>"):
        parse_bmap('<bmap version="2.0"><ImageSize>1</ImageSize></bmap>')
    good = bmap_xml(bytearray(b"\x01" * 8192))
    with pytest.raises(BadArguments, match="out of order"):
        parse_bmap(good.replace("> 0-1 <", "> 1-0 <"))


def test_bmap_writes_only_mapped_ranges_and_checks_each(tmp_path: Path) -> None:
    image = bytearray(4 * MiB)
    image[0:4096] = b"\x11" * 4096
    image[2 * MiB : 2 * MiB + 8192] = os.urandom(8192)
    bmap = parse_bmap(bmap_xml(image))
    target = tmp_path / "card"
    with open(target, "wb") as f:
        f.write(b"\xaa" * 8 * MiB)
    fd = os.open(target, os.O_RDWR)
    try:
        w = ImageWriter(
            fd,
            8 * MiB,
            WritePlan(source="t", bmap=bmap, verify=True),
            Progress(),
            threading.Event(),
        )
        written = w.run(CountingReader(io.BytesIO(compress(image, "zst")), threading.Event()))
        w.verify(written)
    finally:
        os.close(fd)
    card = target.read_bytes()
    assert (
        card[:4096] == image[:4096]
        and card[2 * MiB : 2 * MiB + 8192] == image[2 * MiB : 2 * MiB + 8192]
    )
    assert card[4096 : 2 * MiB] == b"\xaa" * (2 * MiB - 4096)  # unmapped: untouched
    bad = bmap_xml(image).replace(hashlib.sha256(bytes(image[:4096])).hexdigest(), "ab" * 32)
    with pytest.raises(ImageError, match=r"bmap range 0 \(bytes 0-4095\) has sha256"):
        write(bytes(image), tmp_path / "card2", bmap=parse_bmap(bad))


def test_verify_reads_back_and_a_changed_card_fails(tmp_path: Path) -> None:
    image = os.urandom(3 * MiB)
    target = tmp_path / "card"
    with open(target, "wb") as f:
        f.truncate(8 * MiB)
    fd = os.open(target, os.O_RDWR)
    try:
        w = ImageWriter(
            fd, 8 * MiB, WritePlan(source="t", verify=True), Progress(), threading.Event()
        )
        written = w.run(CountingReader(io.BytesIO(image), threading.Event()))
        w.verify(written)  # what was written reads back the same
        os.pwrite(fd, b"\x00" * 16, MiB)  # a card that lost 16 bytes
        with pytest.raises(ImageError, match="verify failed: bytes 0-3145727 read back"):
            w.verify(written)
    finally:
        os.close(fd)
