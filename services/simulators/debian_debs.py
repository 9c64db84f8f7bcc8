"""Files out of Debian packages, fetched with apt and kept in ``~/.cache/labctl``.

The QEMU board images need a kernel and a static busybox for the board's architecture.
They come from Debian's archive through the ordinary client (``apt-get download``, no
root, no install) and one file is unpacked from each .deb in Python (ar + tar), so
nothing is installed on the host and repeated builds touch neither apt nor the network.

What may go wrong: no apt (not Debian), the foreign architecture not configured
(``dpkg --add-architecture arm64 && apt-get update``), no network on a first build. Each
ends in one ``ImageError`` line saying what to do.
"""

from __future__ import annotations

import fnmatch
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


class ImageError(Exception):
    """Building an image failed; the message is one line saying why and what to do."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "labctl"


def _apt(args: list[str], cwd: Path) -> str:
    if shutil.which(args[0]) is None:
        raise ImageError(f"{args[0]} not found: the image builder fetches Debian packages with apt")
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ["no error output"])[-1]
        raise ImageError(f"{' '.join(args)} failed: {err}")
    return proc.stdout


def fetch_deb(package: str, arch: str) -> Path:
    """The cached .deb of ``package`` (a metapackage resolves to what it depends on).

    A .deb already in the cache is used as it is: builds stay offline and fast.
    """
    debs = cache_dir() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    deb_arch = DEB_ARCH[arch]
    pattern = f"{package}_*_{deb_arch}.deb"
    if package.startswith("linux-image-cloud-"):  # the metapackage: any cached version will do
        pattern = f"linux-image-*-cloud-{deb_arch}_*_{deb_arch}.deb"
    found = sorted(debs.glob(pattern))
    if found:
        return found[-1]
    name = f"{package}:{deb_arch}"
    if package.startswith("linux-image-cloud-"):
        out = _apt(["apt-cache", "depends", "--no-recommends", "--no-suggests", name], debs)
        deps = [
            line.split(":", 1)[1].strip()
            for line in out.splitlines()
            if line.strip().startswith("Depends:") and "linux-image-" in line
        ]
        if not deps:
            raise ImageError(f"apt knows no kernel behind {name}{_arch_hint(deb_arch)}")
        name = deps[0] if ":" in deps[0] else f"{deps[0]}:{deb_arch}"
    try:
        _apt(["apt-get", "download", "-q", name], debs)
    except ImageError as exc:
        raise ImageError(f"{exc}{_arch_hint(deb_arch)}") from None
    found = sorted(debs.glob(pattern))
    if not found:
        raise ImageError(f"apt-get download {name} left no {pattern} in {debs}")
    return found[-1]


def _arch_hint(deb_arch: str) -> str:
    if deb_arch == "amd64":
        return ""
    return f" (for {deb_arch}: dpkg --add-architecture {deb_arch} && apt-get update)"


def _deb_data(deb: Path) -> tuple[bytes, str]:
    """The data.tar member of a .deb (an ar archive) and its compression suffix."""
    raw = deb.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise ImageError(f"{deb} is not a Debian package")
    pos = 8
    while pos + 60 <= len(raw):
        header = raw[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        pos += 60
        if name.startswith("data.tar"):
            return raw[pos : pos + size], name[len("data.tar") :]
        pos += size + (size & 1)
    raise ImageError(f"{deb} has no data.tar member")


def _open_tar(data: bytes, suffix: str) -> tarfile.TarFile:
    """A streaming reader of data.tar (xz, gzip, bzip2 found by tarfile; zstd here)."""
    if suffix == ".zst":
        import zstandard

        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return tarfile.open(fileobj=io.BytesIO(data), mode="r|*")


def unpacked(package: str, arch: str, wanted: dict[str, str]) -> dict[str, Path]:
    """Files out of ``package``'s .deb, cached under ``qemu/<arch>/``: name -> path.

    ``wanted`` maps a cache name to a glob of the path inside the package
    (``{"vmlinuz": "./boot/vmlinuz-*"}``); one pass over the archive finds them all. A stamp
    beside each file names the .deb it came from, so a newer .deb in the cache wins.
    """
    deb = fetch_deb(package, arch)
    where = cache_dir() / "qemu" / arch
    out = {name: where / name for name in wanted}
    stamps = {name: where / (name + ".from") for name in wanted}
    if all(out[n].exists() and stamps[n].exists() and stamps[n].read_text() == deb.name
           for n in wanted):  # fmt: skip
        return out
    where.mkdir(parents=True, exist_ok=True)
    data, suffix = _deb_data(deb)
    found: dict[str, bytes] = {}
    with _open_tar(data, suffix) as tar:
        for info in tar:
            for name, member_glob in wanted.items():
                if name not in found and info.isfile() and fnmatch.fnmatch(info.name, member_glob):
                    src = tar.extractfile(info)
                    assert src is not None
                    found[name] = src.read()
            if len(found) == len(wanted):
                break
    missing = [wanted[n] for n in wanted if n not in found]
    if missing:
        raise ImageError(f"{deb.name} holds no {', '.join(missing)}")
    for name, content in found.items():
        tmp = out[name].with_name(name + ".tmp")
        tmp.write_bytes(content)
        tmp.chmod(0o755)
        os.replace(tmp, out[name])
        stamps[name].write_text(deb.name)
    return out
