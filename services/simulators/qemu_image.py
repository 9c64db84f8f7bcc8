"""A really bootable disk image for the QEMU boards, built rootless (no mount, no losetup).

Layout (``shared/research/qemu.md``): an MBR with one bootable FAT16 partition at 1 MiB
holding the kernel, a busybox initramfs and the boot loader's config:

- ``x86_64``: SYSLINUX (``mbr.bin`` in the MBR, ``ldlinux.sys`` installed with mtools),
  ``syslinux.cfg``; SeaBIOS boots it.
- ``aarch64``: ``extlinux/extlinux.conf``, which U-Boot's standard boot finds.

The version marker ``LABCTL_IMAGE_VERSION=<v>`` sits at byte 4096 (in the gap before the
partition), in ``/VERSION`` on the FAT and in the guest's ``/etc/os-release``, so the
simulated DUT's scan of the first MiBs finds it and the same image boots there too.
The kernel and busybox come from Debian's .debs (``debian_debs``), cached.

Tools used, by Debian package: ``mkfs.fat`` (dosfstools), ``mcopy``/``mmd`` (mtools),
``syslinux`` and ``mbr.bin`` (syslinux, syslinux-common; x86_64 only).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .debian_debs import DEB_ARCH, ImageError, unpacked
from .image_outputs import compress, write_bmap
from .initramfs import CONSOLE, MODULES, build_initramfs, check_version

MIB = 1 << 20
MARKER_OFFSET = 4096
MBR_BIN = ("/usr/lib/syslinux/mbr/mbr.bin", "/usr/lib/SYSLINUX/mbr.bin")
ARCHES = ("x86_64", "aarch64")
TOOLS = {"mkfs.fat": "dosfstools", "mcopy": "mtools", "mmd": "mtools", "syslinux": "syslinux"}


def _tool(name: str) -> str:
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/sbin/{name}"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ImageError(f"{name} not found: install the Debian package {TOOLS[name]}")


def _run(*args: str) -> None:
    proc = subprocess.run([_tool(args[0]), *args[1:]], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        err = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise ImageError(f"{args[0]} failed: {err}")


def _mbr_boot_code() -> bytes:
    for path in MBR_BIN:
        if os.path.exists(path):
            return Path(path).read_bytes()[:440]
    raise ImageError("syslinux mbr.bin not found: install the Debian package syslinux-common")


def _chs(lba: int) -> bytes:
    """CHS address for the partition table (255 heads, 63 sectors), saturated past 1023."""
    cyl, rest = divmod(lba, 255 * 63)
    if cyl > 1023:
        return b"\xfe\xff\xff"
    head, sector = divmod(rest, 63)
    return bytes((head, ((cyl >> 2) & 0xC0) | (sector + 1), cyl & 0xFF))


def partition_table(start: int, sectors: int) -> bytes:
    """Bytes 440..511 of the MBR: disk signature, one bootable FAT16 (0x0e) entry, 0x55AA."""
    entry = (
        b"\x80"
        + _chs(start)
        + b"\x0e"
        + _chs(start + sectors - 1)
        + start.to_bytes(4, "little")
        + sectors.to_bytes(4, "little")
    )
    return b"LBCT" + b"\0\0" + entry + bytes(48) + b"\x55\xaa"


def _copy_sparse(src: Path, dst: Path, offset: int) -> None:
    """Copy ``src`` into ``dst`` at ``offset``, leaving all-zero blocks as holes."""
    with open(src, "rb") as s, open(dst, "r+b") as d:
        pos = offset
        while chunk := s.read(MIB):
            for at in range(0, len(chunk), 4096):
                block = chunk[at : at + 4096]
                if block.count(0) != len(block):
                    d.seek(pos + at)
                    d.write(block)
            pos += len(chunk)


def build_image(
    out: Path, version: str, arch: str = "x86_64", compression: str | None = None
) -> dict[str, Path]:
    """Build ``out`` (+ ``out.bmap``, + ``out.zst``/``out.xz``); returns what was written."""
    check_version(version)
    if arch not in ARCHES:
        raise ImageError(f"arch {arch!r}: choose {' or '.join(ARCHES)}")
    deb_arch = DEB_ARCH[arch]
    kernel_files = unpacked(
        f"linux-image-cloud-{deb_arch}",
        arch,
        {"vmlinuz": "./boot/vmlinuz-*"}
        | {f"{m}.ko": f"./lib/modules/*/kernel/drivers/*/{m}.ko" for m in MODULES},
    )
    kernel = kernel_files.pop("vmlinuz")
    busybox = unpacked("busybox-static", arch, {"busybox": "./bin/busybox"})["busybox"]
    marker = f"LABCTL_IMAGE_VERSION={version}\n"
    with tempfile.TemporaryDirectory(prefix="labctl-image-") as tmp:
        w = Path(tmp)
        (w / "initrd.img").write_bytes(build_initramfs(busybox, arch, version, kernel_files))
        (w / "VERSION").write_text(marker)
        boot_files = kernel.stat().st_size + (w / "initrd.img").stat().st_size
        part_mib = max(20, boot_files // MIB + 3)
        fat = w / "boot.fat"
        _run("mkfs.fat", "-F", "16", "-n", "LABCTLBOOT", "-i", "4c424354", "-C", str(fat),
             str(part_mib * 1024))  # fmt: skip
        # VERSION first: its data lands at the start of the data area, early in the disk
        _run("mcopy", "-i", str(fat), str(w / "VERSION"), "::/VERSION")
        tty = CONSOLE[arch]
        if arch == "x86_64":
            (w / "syslinux.cfg").write_text(
                "SERIAL 0 115200\nDEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n"
                f"  KERNEL /vmlinuz\n  INITRD /initrd.img\n  APPEND console={tty},115200\n"
            )
            _run("mcopy", "-i", str(fat), str(w / "syslinux.cfg"), "::/syslinux.cfg")
            _run("mcopy", "-i", str(fat), str(kernel), "::/vmlinuz")
        else:
            (w / "extlinux.conf").write_text(
                "DEFAULT linux\nTIMEOUT 0\nLABEL linux\n"
                f"  LINUX /Image\n  INITRD /initrd.img\n  APPEND console={tty},115200\n"
            )
            _run("mmd", "-i", str(fat), "::/extlinux")
            _run("mcopy", "-i", str(fat), str(w / "extlinux.conf"), "::/extlinux/extlinux.conf")
            _run("mcopy", "-i", str(fat), str(kernel), "::/Image")
        _run("mcopy", "-i", str(fat), str(w / "initrd.img"), "::/initrd.img")
        if arch == "x86_64":
            _run("syslinux", "--install", str(fat))
        tmp_out = out.with_name(out.name + ".tmp")
        with open(tmp_out, "wb") as f:
            f.truncate((1 + part_mib) * MIB)
            f.write(_mbr_boot_code() if arch == "x86_64" else bytes(440))
            f.write(partition_table(2048, part_mib * 2048))
            f.seek(MARKER_OFFSET)
            f.write(marker.encode())
        _copy_sparse(fat, tmp_out, MIB)
        tmp_out.replace(out)
    written = {"image": out, "bmap": write_bmap(out)}
    if compression:
        written[compression] = compress(out, compression)
    return written
