"""A QEMU virtual board's power: ``on`` starts QEMU on the board's disk, ``off`` kills it.

The board is three devices in one ``dut`` group, as a physical board is: this power
device, a storage ``mock`` device whose target file is the board's disk (``disk``), and
a serial ``pyserial`` device on ``socket://127.0.0.1:<console_port>``.

- **Card**: at power-on the disk is attached only if the storage mux is at the DUT
  (``mux_file``, the storage mock's ``state_file``: ``host``/``dut``/``off``; missing file
  = no card). Without it the firmware finds nothing to boot, like a board without its card.
  Switching the card away from the DUT while the board runs is yanking it: the drive is
  removed from the running guest (QMP ``drive_del``), whose reads then fail with I/O
  errors; a card switched back is seen at the next power-on.
- **Console**: this service owns the board's UART. It listens on ``console_port`` for the
  serial service and stays there across power cycles (a USB-UART adapter stays plugged in
  while the board is off), so the serial device stays online and keeps one scrollback.
  QEMU connects to the driver's private socket before the guest runs, so no boot byte is
  lost; bytes with nobody on the UART are dropped, as on a real line.
- **Off** kills QEMU at once (SIGKILL: pulling the plug). A guest ``poweroff`` ends QEMU
  too, and the state changes to ``off`` by itself.

What may go wrong: QEMU or the firmware not installed (the device is offline, and ``on``
says which Debian package to install), QEMU failing at start (``on`` raises with its
last stderr line), the console port taken (the service fails at start, naming it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Literal, NamedTuple

import structlog
import trio
from pydantic import Field

from labctl.errors import DriverError

from .. import child_process
from ..driver import DriverConfig
from .interface import PowerDriver

log = structlog.get_logger("qemu")


class Machine(NamedTuple):
    binary: str
    package: str  # the Debian package that has the binary
    args: list[str]
    firmware: str | None  # default -bios; None: QEMU's own (SeaBIOS, package seabios)


MACHINES = {
    "x86_64": Machine(
        "qemu-system-x86_64", "qemu-system-x86", ["-machine", "pc,graphics=off"], None
    ),
    "aarch64": Machine(
        "qemu-system-aarch64",
        "qemu-system-arm",
        ["-machine", "virt", "-cpu", "cortex-a57"],
        "/usr/lib/u-boot/qemu_arm64/u-boot.bin",
    ),
}
FIRMWARE_PACKAGES = {"/usr/lib/u-boot/": "u-boot-qemu", "/usr/share/seabios/": "seabios"}
#: how often the mux state is read while the board runs
MUX_POLL = 0.2
#: longest QEMU may take from exec to connecting its console
START_TIMEOUT = 20.0


class QemuConfig(DriverConfig):
    machine: Literal["x86_64", "aarch64"] = "x86_64"
    memory: str = "256M"
    disk: Path
    mux_file: Path | None = None  # the storage mock's state_file; None: the card is always in
    firmware: Path | None = None  # -bios; default: SeaBIOS (x86_64), U-Boot (aarch64)
    console_port: int = Field(ge=1, le=65535)
    console_host: str = "127.0.0.1"
    qemu: str | None = None  # the QEMU binary, if not the machine's usual one
    extra_args: list[str] = []


class _Run:
    """One powered-on period: the QEMU process and its private sockets."""

    def __init__(self, proc: child_process.Child, workdir: Path, card: bool) -> None:
        self.proc = proc
        self.workdir = workdir
        self.card = card
        self.console: trio.SocketStream | None = None


class QemuPower(PowerDriver):
    """Power of a QEMU board; see the module docstring for the card and console rules."""

    Config = QemuConfig
    config: QemuConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._run: _Run | None = None
        self._uart: trio.SocketStream | None = None
        self._nursery: trio.Nursery | None = None
        self._lock = trio.Lock()
        # one sender per direction: a power cycle may overlap an old pump with a new one
        self._to_uart = trio.Lock()
        self._to_board = trio.Lock()
        self._missing = self._missing_packages()

    # -- what is installed ---------------------------------------------------------------
    @property
    def binary(self) -> str:
        return self.config.qemu or MACHINES[self.config.machine].binary

    @property
    def firmware(self) -> str | None:
        if self.config.firmware is not None:
            return str(self.config.firmware)
        return MACHINES[self.config.machine].firmware

    def _missing_packages(self) -> str:
        """One line naming what to install, or ``""``."""
        machine = MACHINES[self.config.machine]
        if shutil.which(self.binary) is None:
            package = machine.package if self.config.qemu is None else "QEMU"
            return f"{self.binary} not found: install the Debian package {package}"
        fw = self.firmware
        if fw is not None and not os.path.exists(fw):
            owner = next((p for d, p in FIRMWARE_PACKAGES.items() if fw.startswith(d)), None)
            hint = f"install the Debian package {owner}" if owner else "check 'firmware'"
            return f"firmware {fw} not found: {hint}"
        return ""

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        if self._missing:
            self.ctx.set_online(False, self._missing)
        try:
            listeners = await trio.open_tcp_listeners(
                self.config.console_port, host=self.config.console_host
            )
        except OSError as exc:
            raise DriverError(
                f"{self.name}: cannot listen for the console on "
                f"{self.config.console_host}:{self.config.console_port}: {exc}"
            ) from exc
        nursery.start_soon(trio.serve_listeners, self._serve_uart, listeners)
        self.observed(False)

    async def close(self) -> None:
        await self._kill()

    # -- power primitives ----------------------------------------------------------------
    async def get_power(self) -> bool:
        return self._run is not None

    async def set_power(self, on: bool) -> None:
        async with self._lock:
            if not on:
                await self._kill()
            elif self._run is None:
                await self._start_qemu()

    # -- the UART the serial service connects to ------------------------------------------
    async def _serve_uart(self, stream: trio.SocketStream) -> None:
        """One serial client at a time: a new connection replaces the old one."""
        old, self._uart = self._uart, stream
        if old is not None:
            await old.aclose()
        try:
            async for data in stream:
                run = self._run
                if run is not None and run.console is not None:
                    async with self._to_board:
                        with contextlib.suppress(
                            trio.BrokenResourceError, trio.ClosedResourceError
                        ):
                            await run.console.send_all(data)
                # board off: typing into a dead UART goes nowhere
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            if self._uart is stream:
                self._uart = None

    async def _board_to_uart(self, console: trio.SocketStream) -> None:
        async for data in console:
            async with self._to_uart:
                uart = self._uart
                if uart is not None:
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await uart.send_all(data)

    # -- QEMU ----------------------------------------------------------------------------
    def _card_present(self) -> bool:
        if not self.config.disk.exists():
            return False
        if self.config.mux_file is None:
            return True
        try:
            return self.config.mux_file.read_text().strip() == "dut"
        except FileNotFoundError:
            return False

    def _argv(self, workdir: Path, card: bool) -> list[str]:
        cfg = self.config
        argv = [self.binary, *MACHINES[cfg.machine].args]
        argv += ["-accel", "tcg", "-m", cfg.memory, "-nodefaults", "-display", "none"]
        if self.firmware:
            argv += ["-bios", self.firmware]
        argv += ["-chardev", f"socket,id=con0,path={workdir / 'console.sock'}"]
        argv += ["-serial", "chardev:con0"]
        argv += ["-qmp", f"unix:{workdir / 'qmp.sock'},server=on,wait=off"]
        if card:
            argv += ["-drive", f"if=none,id=card,file={cfg.disk},format=raw"]
            argv += ["-device", "virtio-blk-pci,drive=card"]
        return argv + cfg.extra_args

    async def _start_qemu(self) -> None:
        if self._missing:
            raise DriverError(f"{self.name}: {self._missing}")
        assert self._nursery is not None, "start() runs before any call"
        workdir = Path(tempfile.mkdtemp(prefix="labctl-qemu-"))
        listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await listener.bind(str(workdir / "console.sock"))
        listener.listen(1)
        card = self._card_present()
        argv = self._argv(workdir, card)
        stderr = open(workdir / "stderr", "wb")  # noqa: SIM115 (closed below)
        try:
            # forked from this (trio's) thread, so it dies with the service: child_process
            proc = child_process.spawn(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        except OSError as exc:
            listener.close()
            shutil.rmtree(workdir, ignore_errors=True)
            raise DriverError(f"{self.name}: cannot run {argv[0]}: {exc}") from exc
        finally:
            stderr.close()
        run = _Run(proc, workdir, card)
        try:
            run.console = await self._accept_console(listener, proc, workdir)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._reap(run)
            raise
        finally:
            listener.close()
        self._run = run
        log.info("board powered on", device=self.name, card=card, pid=proc.pid)
        self._nursery.start_soon(self._supervise, run)

    async def _accept_console(
        self, listener: trio.socket.SocketType, proc: child_process.Child, workdir: Path
    ) -> trio.SocketStream:
        """QEMU's console connection; DriverError with its stderr if QEMU exits first."""
        result: list[trio.SocketStream] = []
        async with trio.open_nursery() as nursery:

            async def accept() -> None:
                sock, _ = await listener.accept()
                result.append(trio.SocketStream(sock))
                nursery.cancel_scope.cancel()

            async def exited() -> None:
                await proc.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(accept)
            nursery.start_soon(exited)
            with trio.move_on_after(START_TIMEOUT):
                await trio.sleep_forever()
            nursery.cancel_scope.cancel()
        if result:
            return result[0]
        if proc.returncode is None:
            raise DriverError(f"{self.name}: QEMU did not start within {START_TIMEOUT:.0f}s")
        try:
            lines = (workdir / "stderr").read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        why = lines[-1] if lines else f"exit status {proc.returncode}"
        raise DriverError(f"{self.name}: QEMU exited at start: {why}")

    async def _supervise(self, run: _Run) -> None:
        """Pump the console and watch the card until QEMU exits; then it is off."""
        try:
            async with trio.open_nursery() as nursery:
                assert run.console is not None
                nursery.start_soon(self._pump_until_eof, run.console)
                if run.card and self.config.mux_file is not None:
                    nursery.start_soon(self._watch_card, run)
                await run.proc.wait()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._reap(run)
            if self._run is run:
                self._run = None
                self._switches += 1
                self.observed(False)
                log.info("board off", device=self.name, rc=run.proc.returncode)

    async def _pump_until_eof(self, console: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._board_to_uart(console)

    async def _watch_card(self, run: _Run) -> None:
        """Yank the drive when the mux leaves the DUT while the board runs."""
        assert self.config.mux_file is not None
        while True:
            await trio.sleep(MUX_POLL)
            try:
                side = self.config.mux_file.read_text().strip()
            except OSError:  # gone (or unreadable): no card at the DUT
                side = "off"
            if side != "dut":
                break
        log.info("card yanked from a running board", device=self.name, mux=side)
        try:
            await self._qmp(run, "human-monitor-command", {"command-line": "drive_del card"})
        except (OSError, ValueError, DriverError, trio.TooSlowError) as exc:
            # a monitor that hangs or garbles must not take the service down with it
            log.warning("could not detach the card", device=self.name, error=repr(exc))
        run.card = False

    async def _qmp(self, run: _Run, command: str, arguments: dict[str, Any]) -> Any:
        """One QMP command on the board's monitor socket."""
        with trio.fail_after(5):
            stream = await trio.open_unix_socket(str(run.workdir / "qmp.sock"))
            async with stream:
                buf = b""

                async def reply() -> dict[str, Any]:
                    nonlocal buf
                    while True:
                        while b"\n" in buf:
                            line, buf = buf.split(b"\n", 1)
                            msg = json.loads(line)
                            if "return" in msg or "error" in msg or "QMP" in msg:
                                return msg  # type: ignore[no-any-return]
                        data = await stream.receive_some(65536)
                        if not data:
                            raise DriverError("QMP socket closed")
                        buf += data

                await reply()  # the greeting
                for cmd, args in (("qmp_capabilities", {}), (command, arguments)):
                    await stream.send_all(json.dumps({"execute": cmd, "arguments": args}).encode())
                    msg = await reply()
                    if "error" in msg:
                        raise DriverError(f"QMP {cmd}: {msg['error'].get('desc')}")
                return msg.get("return")

    async def _kill(self) -> None:
        run = self._run
        if run is None:
            return
        self._run = None
        await self._reap(run)
        log.info("board powered off", device=self.name)

    async def _reap(self, run: _Run) -> None:
        """SIGKILL QEMU (if still running), wait for it, drop its sockets and files."""
        if run.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                run.proc.kill()
        await run.proc.wait()
        if run.console is not None:
            await run.console.aclose()
        shutil.rmtree(run.workdir, ignore_errors=True)
