"""Drive a board's U-Boot over its serial console: commands, exit codes and the environment.

    with lease.uboot() as ub:              # power-cycle, stop autoboot, wait for "=>"
        print(ub.run("printenv bootcmd"))
        ub.setenv("bootdelay", "5")
        ub.boot()                          # then ub.console.expect("login: ")

Each command is wrapped in two markers echoed by U-Boot itself, the second with ``$?``, so
``run`` returns exactly the command's output and ``run_checked`` knows its exit status.
The markers are typed split in quotes (``'LBM''1a2b…'``), so the console's echo of the
typed line never matches them. Needs U-Boot's hush shell (``$?``, quotes), which distro
U-Boot builds have.

What may go wrong: no autoboot banner or prompt within ``timeout`` (``pexpect.TIMEOUT``:
wrong prompt, board without U-Boot, a console nobody reads), a command that never returns
(``run`` times out), a non-zero status (``run_checked`` raises ``UBootCommandFailed``).
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from .errors import LabError, Timeout

__all__ = ["UBoot", "UBootCommandFailed"]


class UBootCommandFailed(LabError):
    """A U-Boot command returned a non-zero status; ``.status`` and ``.output`` say what."""

    def __init__(self, command: str, status: int, output: str) -> None:
        last = output.strip().splitlines()[-1] if output.strip() else "no output"
        super().__init__(f"U-Boot command {command!r} failed (status {status}): {last}")
        self.command, self.status, self.output = command, status, output


def quote(value: str) -> str:
    """A U-Boot hush word for ``value``: single-quoted, a ``'`` written as ``'\\''``."""
    if "\n" in value or "\r" in value:
        raise ValueError("U-Boot values cannot hold line breaks")
    return "'" + value.replace("'", "'\\''") + "'"


class UBoot:
    """U-Boot's prompt on a lease's board; use as a context manager (see the module doc).

    ``power``/``serial`` name the devices when the lease holds more than one of a kind;
    ``cycle=False`` attaches to a board already sitting at the prompt.
    """

    def __init__(
        self,
        lease: Any,
        prompt: str = "=>",
        autoboot: str = "Hit any key to stop autoboot",
        interrupt: str = "\n",
        timeout: float = 60.0,
        power: str | None = None,
        serial: str | None = None,
        cycle: bool = True,
    ) -> None:
        self.lease = lease
        self.prompt = prompt
        self.autoboot = autoboot
        self.interrupt = interrupt
        self.timeout = timeout
        self.power = lease[power] if power else lease.power
        self.serial = lease[serial] if serial else lease.serial
        self.cycle = cycle
        self.console: Any = None

    def __enter__(self) -> UBoot:
        self.console = self.serial.console()  # new output only: opened before power-on
        waiting_for = self.prompt
        try:
            if self.cycle:
                self.power.off()
                self.power.on()
                waiting_for = self.autoboot
                self.console.expect_exact(self.autoboot, timeout=self.timeout)
                self.console.send(self.interrupt)
                waiting_for = self.prompt
            else:
                self.console.send("\n")
            self.console.expect_exact(self.prompt, timeout=self.timeout)
        except BaseException as exc:
            self.close()
            import pexpect

            if isinstance(exc, pexpect.TIMEOUT):
                hint = "" if self.cycle else " (without a power cycle the board must be at U-Boot)"
                raise Timeout(
                    f"{self.serial.name}: no {waiting_for!r} within {self.timeout:g}s{hint}"
                ) from None
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.console is not None:
            self.console.close()
            self.console = None

    # -- commands ------------------------------------------------------------------------
    def run_status(self, command: str, timeout: float | None = None) -> tuple[int, str]:
        """Run ``command`` at the prompt (within ``timeout`` s, default the helper's own);
        its exit status and output (``\\n`` line ends)."""
        if "\n" in command or "\r" in command:
            raise ValueError("one U-Boot command line at a time (no line breaks)")
        timeout = self.timeout if timeout is None else timeout
        con = self._console()
        tag = secrets.token_hex(4)
        mark = f"LBM{tag}"
        typed = f"'LBM''{tag}'"
        con.sendline(f"echo {typed}; {command}; echo {typed} $?")
        con.expect(re.escape(mark) + r"\r?\n", timeout=timeout)
        con.expect(re.escape(mark) + r" (\d+)\r?\n", timeout=timeout)
        output = con.before.replace("\r\n", "\n")
        status = int(con.match.group(1))
        con.expect_exact(self.prompt, timeout=timeout)
        return status, output

    def run(self, command: str, timeout: float | None = None) -> str:
        """Run ``command``; its output, whatever its exit status."""
        return self.run_status(command, timeout)[1]

    def run_checked(self, command: str, timeout: float | None = None) -> str:
        """Run ``command``; its output, or ``UBootCommandFailed`` on a non-zero status."""
        status, output = self.run_status(command, timeout)
        if status != 0:
            raise UBootCommandFailed(command, status, output)
        return output

    # -- the environment -----------------------------------------------------------------
    def getenv(self, key: str) -> str | None:
        """The variable's value, ``None`` when it is not set."""
        _check_key(key)
        status, output = self.run_status(f"printenv {key}")
        if status != 0:
            return None
        prefix = f"{key}="
        for line in output.splitlines():
            if line.startswith(prefix):
                return line[len(prefix) :]
        return None

    def setenv(self, key: str, value: str | None) -> None:
        """Set ``key`` (``None`` deletes it); in RAM until ``run("saveenv")``."""
        _check_key(key)
        if value is None:
            self.run_checked(f"setenv {key}")
        else:
            self.run_checked(f"setenv {key} {quote(str(value))}")

    def setenv_all(self, values: dict[str, str | None]) -> None:
        for key, value in values.items():
            self.setenv(key, value)

    def printenv(self) -> dict[str, str]:
        """The whole environment as a dict."""
        out: dict[str, str] = {}
        for line in self.run_checked("printenv").splitlines():
            key, eq, value = line.partition("=")
            if eq and re.fullmatch(r"[^\s=]+", key):
                out[key] = value
        return out

    def boot(self, command: str = "boot") -> Any:
        """Leave the prompt and boot; returns the console to expect on (``login:``)."""
        con = self._console()
        con.sendline(command)
        return con

    def _console(self) -> Any:
        if self.console is None:
            raise LabError("the U-Boot console is closed: use UBoot inside a with block")
        return self.console


def _check_key(key: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_.:-]+", key):
        raise ValueError(f"{key!r} is not a U-Boot variable name")
