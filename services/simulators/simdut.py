"""A simulated DUT console on a real pty, for tests and the simulated lab.

    python -m labctl.services.simulators.simdut --link /tmp/lab/rpi4-01.tty [--boot-delay 0.5]
        [--power-file /tmp/lab/rpi4-01.power] [--hostname rpi4-01]

It creates a pty, points ``--link`` at its slave side (a serial service uses that path as
its ``url``; or, with ``--listen HOST:PORT`` instead, serves it on TCP for ``socket://``),
prints ``simdut ready <slave> <link>`` on stdout, then plays a board:
a U-Boot banner, a Linux boot log after ``--boot-delay`` seconds, a ``login:`` prompt that
accepts ``root`` (no password), and a ``# `` shell answering ``uname [-a]``, ``echo``,
``cat /etc/os-release``, ``reboot`` and ``exit``/``logout`` (back to ``login:``).

With ``--storage CARD --storage-state FILE`` (a mock storage device's ``path`` and
``state_file``) the board boots what was written to its card: an image carrying
``LABCTL_IMAGE_VERSION=<v>`` in its first MiBs boots, prints the version and answers
``cat /etc/os-release`` with ``VERSION_ID=<v>``; no image or no marker stops at a U-Boot
``=> `` prompt after a boot failure; a card switched to the host is "no medium".

With ``--power-file`` the board is powered only while that file contains ``on``: it
prints nothing while off (or while the file is missing) and boots afresh on each
off->on change, so a mock power driver writing that file drives it. Each power change
is also printed on stdout (``simdut power on``/``off``), for whoever supervises it.

Output nobody reads is dropped, as on a real UART with nothing attached. SIGTERM or
SIGINT ends it and removes the link (if it still points at this simdut's pty).
"""

from __future__ import annotations

import argparse
import select
import signal
import time
from collections.abc import Callable

from .consoles import PtyConsole, TcpConsole

UBOOT = """
U-Boot 2024.01-simdut (Jan 08 2024 - 12:00:00 +0000)

DRAM:  1 GiB
Core:  42 devices, 15 uclasses, devicetree: board
MMC:   mmc@7e300000: 0
Loading Environment from FAT... OK
Net:   eth0: ethernet@7d580000
Hit any key to stop autoboot:  0
switch to partitions #0, OK
mmc0 is current device
Starting kernel ...

"""

LINUX = """[    0.000000] Booting Linux on physical CPU 0x0000000000 [0x410fd083]
[    0.000000] Linux version 6.6.20-simdut (gcc version 12.2.0) #1 SMP PREEMPT
[    0.000000] Machine model: Simulated DUT ({host})
[    0.000000] Kernel command line: console=ttyS0,115200 root=/dev/mmcblk0p2 rw
[    1.024000] mmc0: new high speed SDHC card at address aaaa
[    1.312000] EXT4-fs (mmcblk0p2): mounted filesystem with ordered data mode.
[    2.048000] systemd[1]: Detected architecture arm64.
[  OK  ] Reached target Multi-User System.

Debian GNU/Linux 12 {host} ttyS0

"""

OS_RELEASE = """PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
ID=debian
"""


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


class Board:
    """The console's behaviour, free of I/O: ``feed`` input, ``tick`` the clock.

    ``emit`` receives every byte the board prints.
    """

    def __init__(
        self,
        emit: Callable[[bytes], None],
        hostname: str,
        boot_delay: float,
        card: Callable[[], tuple[str, str | None]] | None = None,
    ):
        #: where the boot medium is and what it boots: ("dut", version|None) or ("host", None)
        self.card = card
        self.version: str | None = None
        self.emit = emit
        self.hostname = hostname
        self.boot_delay = boot_delay
        self.state = "off"  # off, booting, login, shell
        self.line = bytearray()
        self.kernel_at: float | None = None
        self._last_cr = False

    def power(self, on: bool, now: float) -> None:
        if on and self.state == "off":
            self.state = "booting"
            self.emit(crlf(UBOOT))
            self.kernel_at = now + self.boot_delay
            if self.card is not None:
                self.boot_from_card()
        elif not on and self.state != "off":
            self.state, self.kernel_at = "off", None
            self.line.clear()

    def boot_from_card(self) -> None:
        """Look at the card the way a bootloader would; stop at its prompt if nothing boots."""
        assert self.card is not None
        side, version = self.card()
        self.version = None
        if side == "dut" and version:
            self.version = version
            self.emit(crlf(f"Found LABCTL image version {version} on mmc0\n"))
            return
        self.kernel_at = None
        if side != "dut":
            why = "MMC: no medium (the card is switched to the host)\n"
        else:
            why = "mmc0: no bootable image (no LABCTL_IMAGE_VERSION marker)\n"
        self.emit(crlf(why + "Boot failure: nothing to boot\n"))
        self.state = "bootloader"
        self.emit(b"=> ")

    def tick(self, now: float) -> None:
        if self.kernel_at is not None and now >= self.kernel_at:
            self.kernel_at = None
            self.emit(crlf(LINUX.format(host=self.hostname)))
            if self.version is not None:
                self.emit(crlf(f"labctl image version {self.version}\n\n"))
            self.login_prompt()

    def login_prompt(self) -> None:
        self.state = "login"
        self.emit(f"{self.hostname} login: ".encode())

    def prompt(self) -> None:
        self.emit(f"root@{self.hostname}:~# ".encode())

    def feed(self, data: bytes) -> None:
        if self.state not in ("login", "shell", "bootloader"):
            return  # nobody listens while off or booting
        for byte in data:
            char = bytes((byte,))
            if char == b"\n" and self._last_cr:
                self._last_cr = False  # CR LF is one Enter
                continue
            self._last_cr = char == b"\r"
            if char in (b"\r", b"\n"):
                self.emit(b"\r\n")
                line, self.line = self.line.decode(errors="replace"), bytearray()
                self.enter(line)
            elif char in (b"\x7f", b"\x08"):
                if self.line:
                    self.line.pop()
                    self.emit(b"\b \b")
            elif char == b"\x03":
                self.line.clear()
                self.emit(b"^C\r\n")
                if self.state == "shell":
                    self.prompt()
                else:
                    self.login_prompt()
            elif byte >= 0x20:
                self.line += char
                self.emit(char)  # echo, as the tty layer would

    def enter(self, line: str) -> None:
        if self.state == "bootloader":
            name = line.strip().split(" ")[0]
            if name:
                self.emit(crlf(f"Unknown command '{name}' - try 'help'\n"))
            self.emit(b"=> ")
            return
        if self.state == "login":
            if not line.strip():
                self.login_prompt()  # like getty: an empty line asks again
            elif line.strip() == "root":
                self.state = "shell"
                self.emit(crlf("\nWelcome to the simulated DUT.\n\n"))
                self.prompt()
            else:
                self.emit(crlf("\nLogin incorrect\n"))
                self.login_prompt()
            return
        self.run(line.strip())

    def run(self, command: str) -> None:
        name, _, rest = command.partition(" ")
        if name in ("exit", "logout"):
            self.emit(b"logout\r\n\r\n")
            self.login_prompt()
            return
        if name == "reboot":
            self.emit(crlf("[  OK  ] Reached target System Reboot.\n"))
            self.state = "off"
            self.power(True, time.monotonic())
            return
        if command == "uname -a":
            out = f"Linux {self.hostname} 6.6.20-simdut #1 SMP PREEMPT aarch64 GNU/Linux\n"
        elif command == "uname":
            out = "Linux\n"
        elif name == "echo":
            out = rest + "\n"
        elif command == "cat /etc/os-release":
            out = OS_RELEASE
            if self.version is not None:
                out = out.replace('VERSION_ID="12"', f"VERSION_ID={self.version}")
        elif name in ("", "true"):
            out = ""
        else:
            out = f"-sh: {name}: not found\n"
        self.emit(crlf(out))
        self.prompt()


def powered(power_file: str | None) -> bool:
    if power_file is None:
        return True
    try:
        with open(power_file) as f:
            return f.read().strip() == "on"
    except OSError:
        return False


def storage_card(path: str, state_file: str | None) -> tuple[str, str | None]:
    """Where the card is (a mock storage device's state file) and the version it boots."""
    side = "dut"
    if state_file is not None:
        try:
            with open(state_file) as f:
                side = f.read().strip() or "off"
        except OSError:
            side = "off"
    if side != "dut":
        return side, None
    from labctl.services.storage.simimage import find_version

    return side, find_version(path)


def serve(args: argparse.Namespace) -> None:
    console = TcpConsole(args.listen) if args.listen else PtyConsole(args.link)
    card = None
    if args.storage:
        card = lambda: storage_card(args.storage, args.storage_state)  # noqa: E731
    board = Board(console.emit, args.hostname, args.boot_delay, card)
    print(f"simdut ready {console.slave_name} {console.link}", flush=True)
    next_poll = 0.0
    try:
        while True:
            now = time.monotonic()
            if now >= next_poll:
                was_off = board.state == "off"
                board.power(powered(args.power_file), now)
                if was_off != (board.state == "off"):
                    print(f"simdut power {'on' if was_off else 'off'}", flush=True)
                next_poll = now + args.poll_interval
            board.tick(now)
            wake = min(next_poll, board.kernel_at or next_poll)
            writers = [console.master] if console.out and console.master >= 0 else []
            readable, writable, _ = select.select(
                console.readers(), writers, [], max(0.0, wake - time.monotonic())
            )
            if readable:
                board.feed(console.read_ready(readable))
            if writable or console.out:
                console.flush()
    finally:
        console.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="simdut", description=(__doc__ or "").split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--link", help="symlink to create to the pty slave")
    where.add_argument("--listen", metavar="HOST:PORT", help="serve the console on TCP instead")
    parser.add_argument("--boot-delay", type=float, default=0.5, help="U-Boot to Linux, s")
    parser.add_argument("--power-file", help="boot only while this file says 'on'")
    parser.add_argument("--poll-interval", type=float, default=0.05, help="power file poll, s")
    parser.add_argument("--hostname", default="simdut")
    parser.add_argument("--storage", help="the card: boot the image written there")
    parser.add_argument("--storage-state", help="the card's mux side file (host/dut/off)")
    args = parser.parse_args(argv)

    def stop(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not interrupt the exit
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    serve(args)


if __name__ == "__main__":
    main()
