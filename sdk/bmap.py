"""Image facts both the client and the storage service need: bmap files and compression.

A ``.bmap`` (bmaptool's block map, format 1.x and 2.x) lists which blocks of a raw image
hold data; the rest are holes (zeros) nobody needs to write. bmaptool is GPL and not on
PyPI, so this is our own parser of its documented XML. Compression is recognised by
magic bytes, never by file name.
"""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from .errors import BadArguments

#: magic bytes -> compression name; anything else is a raw image
MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"BZh", "bz2"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)
COMPRESSED_SUFFIXES = (".gz", ".xz", ".bz2", ".zst", ".zstd")


def detect_compression(head: bytes) -> str:
    """``gzip``, ``xz``, ``bz2``, ``zstd`` or ``none`` from an image's first bytes."""
    for magic, name in MAGIC:
        if head.startswith(magic):
            return name
    return "none"


@dataclass(slots=True)
class BmapRange:
    first: int  # first block
    last: int  # last block, inclusive
    checksum: str | None = None

    def span(self, block_size: int, image_size: int) -> tuple[int, int]:
        """Byte offset and length (the image's last block may be short)."""
        start = self.first * block_size
        end = min((self.last + 1) * block_size, image_size)
        return start, max(0, end - start)

    def label(self) -> str:
        return f"{self.first}-{self.last}" if self.last != self.first else str(self.first)


@dataclass(slots=True)
class Bmap:
    version: str
    image_size: int
    block_size: int
    blocks: int
    checksum_type: str | None
    ranges: list[BmapRange] = field(default_factory=list)

    def spans(self) -> list[tuple[int, int, BmapRange]]:
        """(offset, length, range) of each mapped range, in image order."""
        out = []
        for r in self.ranges:
            start, length = r.span(self.block_size, self.image_size)
            if length:
                out.append((start, length, r))
        return out

    @property
    def mapped_bytes(self) -> int:
        return sum(length for _, length, _ in self.spans())


def _text(root: ET.Element, tag: str, required: bool = True) -> str | None:
    el = root.find(tag)
    if el is None or el.text is None:
        if required:
            raise BadArguments(f"bmap: missing <{tag}>")
        return None
    return el.text.strip()


def _int(root: ET.Element, tag: str) -> int:
    text = _text(root, tag)
    try:
        return int(text or "")
    except ValueError:
        raise BadArguments(f"bmap: <{tag}> is not a number: {text!r}") from None


def parse_bmap(text: str | bytes) -> Bmap:
    """Parse a bmap file; BadArguments naming what is wrong (version, field, range).

    2.x carries ``ChecksumType`` and per-range ``chksum``; 1.x ``sha1`` attributes (1.2+)
    or none. A ``BmapFileChecksum``/``BmapFileSHA1`` is checked the way bmaptool computes
    it: over the file with that value replaced by zeros.
    """
    raw = text.encode() if isinstance(text, str) else bytes(text)
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        raise BadArguments(f"bmap: not valid XML: {exc}") from None
    if root.tag != "bmap":
        raise BadArguments(f"bmap: root element is <{root.tag}>, not <bmap>")
    version = root.get("version", "")
    major = version.split(".")[0]
    if major not in ("1", "2"):
        raise BadArguments(f"bmap: format version {version!r} is not supported (1.x, 2.x)")
    image_size = _int(root, "ImageSize")
    block_size = _int(root, "BlockSize")
    blocks = _int(root, "BlocksCount")
    if block_size <= 0 or image_size < 0:
        raise BadArguments("bmap: BlockSize must be positive and ImageSize not negative")
    if major == "2":
        ctype = (_text(root, "ChecksumType") or "").lower()
        file_sum_tag = "BmapFileChecksum"
    else:
        ctype = "sha1"
        file_sum_tag = "BmapFileSHA1"
    if ctype not in ("sha1", "sha256", "md5"):
        raise BadArguments(f"bmap: checksum type {ctype!r} is not supported")
    file_sum = _text(root, file_sum_tag, required=False)
    if file_sum:
        zeroed = raw.replace(file_sum.encode(), b"0" * len(file_sum), 1)
        if hashlib.new(ctype, zeroed).hexdigest() != file_sum.lower():
            raise BadArguments(f"bmap: {file_sum_tag} does not match the file (corrupt bmap)")
    bmap = Bmap(version, image_size, block_size, blocks, ctype)
    block_map = root.find("BlockMap")
    if block_map is None:
        raise BadArguments("bmap: missing <BlockMap>")
    prev_last = -1
    for el in block_map.findall("Range"):
        spec = (el.text or "").strip()
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", spec)
        if m is None:
            raise BadArguments(f"bmap: bad range {spec!r}")
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) else first
        if last < first or first <= prev_last or last >= blocks:
            raise BadArguments(
                f"bmap: range {spec} is out of order, overlapping or past {blocks} blocks"
            )
        prev_last = last
        chk = el.get("chksum") or el.get("sha1")
        bmap.ranges.append(BmapRange(first, last, chk.lower() if chk else None))
    return bmap


UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 10**6, "mb": 10**6,
         "mib": 1 << 20, "g": 10**9, "gb": 10**9, "gib": 1 << 30, "t": 10**12, "tib": 1 << 40}  # fmt: skip


def parse_size(value: int | str) -> int:
    """``67108864``, ``"64MiB"``, ``"1.5 GB"`` -> bytes; ValueError otherwise."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
    if m is None or m.group(2).lower() not in UNITS:
        raise ValueError(f"not a size: {value!r} (e.g. 67108864, 64MiB, 8GB)")
    return int(float(m.group(1)) * UNITS[m.group(2).lower()])
