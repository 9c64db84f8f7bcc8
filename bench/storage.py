"""Image writes through the broker beside a local floor, and bmap vs no bmap, in one run.

    python bench/storage.py [--mib 256] [--rounds 3] [--transport ipc|tcp]

Floor: this process runs the storage service's own write pipeline (magic-byte detection,
decompression, sha256, pwrite into a card file) on the local image file, with no bus.
labctl: the sync SDK uploads the same file through a broker into a mock storage service
(separate processes), which runs that pipeline on what arrives. Both write into a card
file without fsync (page cache), so the ratio measures the bus, not the disk. Rounds
alternate floor and labctl for raw and zstd images. Then a raw image with 25% of its
blocks mapped is written through the bus with its bmap (only the mapped quarter travels
and is written) and without it. DESIGN §13: raw >= 60%, zstd >= 80% of the floor.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import threading
import time
from pathlib import Path

import zstandard
from common import new_lab

from labctl.services.storage.pipeline import CountingReader, ImageWriter, Progress, WritePlan
from tests.storage.conftest import storage_service
from tests.storage.images import bmap_xml

MiB = 1 << 20


def make_images(root: Path, mib: int) -> dict[str, Path]:
    """A raw image (64 KiB pseudo-random in every 256 KiB, the rest zeros: compressible,
    not trivial), its zstd form, and a 25%-mapped raw image with its bmap."""
    rnd = random.Random(7)
    size = mib * MiB
    img = bytearray(size)
    for off in range(0, size, 256 * 1024):
        img[off : off + 64 * 1024] = rnd.randbytes(64 * 1024)
    out = {"raw": root / "img.raw", "zst": root / "img.raw.zst"}
    out["raw"].write_bytes(img)
    out["zst"].write_bytes(zstandard.ZstdCompressor(level=3).compress(img))
    sparse = bytearray(size)  # 25% mapped: 1 MiB of data in every 4 MiB
    for off in range(0, size, 4 * MiB):
        sparse[off : off + MiB] = rnd.randbytes(MiB)
    (root / "bmapped").mkdir()
    out["bmapped"] = root / "bmapped" / "img.raw"
    out["bmapped"].write_bytes(sparse)
    out["bmap"] = root / "bmapped" / "img.raw.bmap"
    out["bmap"].write_text(bmap_xml(sparse))
    return out


def floor(path: Path, card: Path) -> float:
    """Seconds for the local decompress + hash + write of ``path`` into ``card``."""
    fd = os.open(card, os.O_RDWR)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        t0 = time.perf_counter()
        with open(path, "rb", buffering=0) as src:
            plan = WritePlan(source=path.name, image_size=None)
            w = ImageWriter(fd, size, plan, Progress(), threading.Event())
            w.run(CountingReader(src, threading.Event()))
        return time.perf_counter() - t0
    finally:
        os.close(fd)


def through_bus(storage, path: Path, bmap: str = "none") -> tuple[float, dict]:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    result = storage.write(path, bmap=bmap, switch=True)
    return time.perf_counter() - t0, result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--transport", default="ipc", choices=["ipc", "tcp"])
    args = ap.parse_args()

    h = new_lab(args.transport)
    try:
        images = make_images(h.root, args.mib)
        local_card = h.root / "local.card"
        with open(local_card, "wb") as f:
            f.truncate((args.mib + 16) * MiB)
        h.start_broker()
        h.start_service(storage_service(h.root, size=f"{args.mib + 16}MiB"))
        lab = h.lab(timeout=30)
        lease = lab.lease("name=sd1", duration="1h")
        sd = lease.storage
        through_bus(sd, images["raw"])  # warm up: page cache, imports, first connections
        floor(images["raw"], local_card)
        times: dict[str, list[float]] = {"raw_floor": [], "raw_bus": [], "zst_floor": [], "zst_bus": [],
                                         "bmap": [], "no_bmap": []}  # fmt: skip
        for _ in range(args.rounds):
            for kind in ("raw", "zst"):
                times[f"{kind}_floor"].append(floor(images[kind], local_card))
                times[f"{kind}_bus"].append(through_bus(sd, images[kind])[0])
            t, r = through_bus(sd, images["bmapped"], bmap=str(images["bmap"]))
            assert r["bmap"] and r["source_bytes"] == args.mib * MiB // 4, r
            times["bmap"].append(t)
            times["no_bmap"].append(through_bus(sd, images["bmapped"])[0])
        lease.release()
        mib = args.mib
        rate = {k: mib / statistics.median(v) for k, v in times.items()}
        report = {
            "image_mib": mib,
            "rounds": args.rounds,
            "mib_per_s": {k: round(v, 1) for k, v in rate.items()},
            "raw_ratio": round(rate["raw_bus"] / rate["raw_floor"], 3),
            "zstd_ratio": round(rate["zst_bus"] / rate["zst_floor"], 3),
            "bmap_speedup": round(rate["bmap"] / rate["no_bmap"], 2),
            "targets": {"raw_ratio": 0.6, "zstd_ratio": 0.8},
        }
        print(json.dumps(report, indent=2))
    finally:
        h.close()
        shutil.rmtree(h.root, ignore_errors=True)  # 3 images of --mib each


if __name__ == "__main__":
    main()
