"""The QEMU board's root file system: a busybox initramfs written as a newc cpio in Python.

Writing the archive ourselves is what keeps the build rootless: entries carry owner 0:0
and a ``/dev/console`` node without mknod or fakeroot, and the result is byte-for-byte
reproducible (fixed mtimes and inode numbers).
"""

from __future__ import annotations

import gzip
import re
import stat
from pathlib import Path

#: sha512-crypt of "labctl" (fixed salt: the same image twice is the same bytes)
ROOT_PASSWORD_HASH = "$6$labctlsalt0000$bDjKqQTa0vagiJhsIo7mKuzrULnvX6Lx8j07/.Xg/8VydC2Y/J2Cm4Drf0EoROQEPxA4ZaDPiTaw1/J0QMYce/"
HOSTNAME = "labctl-vboard"
VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}")
CONSOLE = {"x86_64": "ttyS0", "aarch64": "ttyAMA0"}
#: kernel modules (in load order) that let the guest see its card as /dev/vda: Debian's
#: cloud kernels build virtio as modules
MODULES = ("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
           "virtio_pci", "virtio_blk")  # fmt: skip

INIT = """#!/bin/busybox sh
/bin/busybox mount -t devtmpfs dev /dev 2>/dev/null
exec 0</dev/console 1>/dev/console 2>&1
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys
for m in {modules}; do insmod /lib/modules/$m.ko 2>/dev/null; done
hostname {hostname}
echo "labctl-init: LABCTL_IMAGE_VERSION={version} uptime=$(cut -d' ' -f1 /proc/uptime)"
exec /sbin/init
"""


def check_version(version: str) -> str:
    if not VERSION_RE.fullmatch(version):
        raise ValueError(
            f"version {version!r}: use letters, digits and . _ + ~ - (at most 64 characters)"
        )
    return version


def os_release(version: str) -> str:
    return (
        f'PRETTY_NAME="labctl virtual board {version}"\n'
        'NAME="labctl-vboard"\n'
        "ID=labctl-vboard\n"
        f"VERSION_ID={version}\n"
        f'VERSION="{version}"\n'
        f"LABCTL_IMAGE_VERSION={version}\n"
    )


class Cpio:
    """A newc ("070701") archive in memory."""

    def __init__(self) -> None:
        self.out = bytearray()
        self._ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)):
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        self._ino += 1
        self.out += b"070701" + b"".join(b"%08X" % f for f in fields) + encoded
        self.out += b"\0" * (-len(self.out) % 4)
        self.out += data
        self.out += b"\0" * (-len(self.out) % 4)

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes | str, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data.encode() if isinstance(data, str) else data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._ino = 0
        self._entry("TRAILER!!!", 0)
        self.out += b"\0" * (-len(self.out) % 512)
        return bytes(self.out)


def build_initramfs(
    busybox: Path, arch: str, version: str, modules: dict[str, Path] | None = None
) -> bytes:
    """The gzip'd initramfs: busybox init, a getty on the console, root/labctl.

    ``modules`` (``virtio_blk.ko`` -> file) go to ``/lib/modules`` and load at boot.
    """
    tty = CONSOLE[arch]
    c = Cpio()
    for d in ("bin", "sbin", "etc", "proc", "sys", "dev", "root", "tmp", "usr", "usr/bin",
              "lib", "lib/modules", "mnt"):  # fmt: skip
        c.dir(d)
    for name, path in (modules or {}).items():
        c.file(f"lib/modules/{name}", path.read_bytes())
    c.chardev("dev/console", 5, 1)
    c.file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in ("sh", "mount", "hostname", "cut", "getty", "login", "insmod"):
        c.symlink(f"bin/{applet}", "busybox")
    for applet in ("init", "getty", "poweroff", "reboot", "halt"):
        c.symlink(f"sbin/{applet}", "../bin/busybox")
    modules_order = " ".join(m for m in MODULES if f"{m}.ko" in (modules or {}))
    c.file("init", INIT.format(hostname=HOSTNAME, version=version, modules=modules_order), 0o755)
    c.file("etc/os-release", os_release(version))
    c.file("etc/hostname", HOSTNAME + "\n")
    c.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
    c.file("etc/group", "root:x:0:\n")
    c.file("etc/shadow", f"root:{ROOT_PASSWORD_HASH}:19000:0:99999:7:::\n", 0o600)
    c.file("etc/shells", "/bin/sh\n")
    c.file("etc/profile", "export PS1='root@\\h:\\w# '\nexport PATH=/bin:/sbin:/usr/bin\n")
    c.file("etc/inittab", f"{tty}::respawn:/sbin/getty -L 115200 {tty} vt100\n")
    return gzip.compress(c.finish(), compresslevel=6, mtime=0)
