"""``labctl sim image``: images the simulated and the QEMU boards boot."""

from __future__ import annotations

import click

from .main import main


@main.group()
def sim() -> None:
    """Simulated hardware helpers."""


@sim.command("image")
@click.argument("out", type=click.Path(dir_okay=False, writable=True))
@click.option("--version", "version", default="1.0", show_default=True,
              help="The version the board reports (VERSION_ID, LABCTL_IMAGE_VERSION).")  # fmt: skip
@click.option("--arch", type=click.Choice(["x86_64", "aarch64", "sim"]), default="x86_64",
              show_default=True,
              help="Board to boot it: a QEMU x86_64 (SeaBIOS) or aarch64 (U-Boot) board "
              "(either also boots on a simdut board), or 'sim': a marker-only image "
              "for simdut boards, built without Debian packages.")  # fmt: skip
@click.option("--compress", type=click.Choice(["zstd", "xz"]), default=None,
              help="Also write OUT.zst or OUT.xz.")  # fmt: skip
@click.option("--size", default="8MiB", show_default=True,
              help="Image size, for --arch sim only (sparse).")  # fmt: skip
def sim_image(out: str, version: str, arch: str, compress: str | None, size: str) -> None:
    """Build a bootable disk image OUT (rootless) and OUT.bmap beside it.

    Login root / labctl; /etc/os-release carries VERSION_ID=<version>; the marker
    LABCTL_IMAGE_VERSION=<version> sits in the first MiB, so simdut boards boot it too.
    The kernel and busybox come from Debian packages, fetched once with apt-get download
    into ~/.cache/labctl.
    """
    from pathlib import Path

    from labctl.errors import BadArguments

    path = Path(out)
    if arch == "sim":
        from labctl.bmap import parse_size
        from labctl.services.simulators.image_outputs import compress as compress_image
        from labctl.services.simulators.image_outputs import write_bmap
        from labctl.services.storage.simimage import write_sim_image

        try:
            write_sim_image(out, version, parse_size(size))
        except ValueError as exc:
            raise BadArguments(str(exc)) from None
        written = {"image": path, "bmap": write_bmap(path)}
        if compress:
            written[compress] = compress_image(path, compress)
    else:
        from labctl.services.simulators.debian_debs import ImageError
        from labctl.services.simulators.qemu_image import build_image

        try:
            written = build_image(path, version, arch, compress)
        except (ImageError, ValueError) as exc:
            raise BadArguments(str(exc)) from None
    size_mib = path.stat().st_size / (1 << 20)
    click.echo(f"{out}: {size_mib:.0f} MiB {arch} image, LABCTL_IMAGE_VERSION={version}")
    for what, file in written.items():
        if what != "image":
            click.echo(f"{file}: {what}")
