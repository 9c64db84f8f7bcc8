"""Images the simulated boards boot: a marker ``LABCTL_IMAGE_VERSION=<v>`` in the first MiBs.

``labctl sim image OUT --version V`` writes one; ``simdut`` scans its card for the marker
(``find_version``). The QEMU board issue later builds a really bootable disk carrying the
same marker, so one image boots on both kinds of board.
"""

from __future__ import annotations

import os
import re

MARKER = b"LABCTL_IMAGE_VERSION="
SCAN_BYTES = 4 << 20  # how far into the card the simulated bootloader looks
MARKER_OFFSET = 1 << 20  # where write_sim_image puts it (past a partition table's room)
_VERSION_RE = re.compile(rb"LABCTL_IMAGE_VERSION=([A-Za-z0-9._+~-]{1,64})")


def write_sim_image(path: str, version: str, size: int = 8 << 20) -> int:
    """A sparse image of ``size`` bytes: a boot sector signature, the marker at 1 MiB and
    some data, so compressors and bmap have something to chew on."""
    if not re.fullmatch(r"[A-Za-z0-9._+~-]{1,64}", version):
        raise ValueError(f"version {version!r}: use letters, digits and . _ + ~ - (max 64)")
    size = max(size, MARKER_OFFSET + 64 * 1024)
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(510)
        f.write(b"\x55\xaa")
        f.seek(MARKER_OFFSET)
        f.write(MARKER + version.encode() + b"\n")
        f.write(b"simulated root filesystem\n" * 64)
    os.chmod(path, 0o644)
    return size


def find_version(path: str, scan: int = SCAN_BYTES) -> str | None:
    """The version a card at ``path`` boots, or None (no image, or no marker)."""
    try:
        with open(path, "rb") as f:
            head = f.read(scan)
    except OSError:
        return None
    m = _VERSION_RE.search(head)
    return m.group(1).decode() if m else None
