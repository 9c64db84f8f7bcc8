"""Power switched by commands you configure: a relay script, ``uhubctl``, a vendor CLI.

A command given as a string runs through ``/bin/sh -c``; given as a list it runs directly
(no quoting issues). Each runs in its own process group so a timeout kills the whole tree
(a shell's children included), not just the shell.

Reading the state (``state`` command):

- without ``on_output``: exit code 0 means on, 1 means off (like ``grep -q``), any other
  exit code is an error;
- with ``on_output`` (a regular expression searched in stdout): the command must exit 0;
  a match means on. With ``off_output`` as well, a match of that means off and output
  matching neither is an error; without it, no match means off.
- no ``state`` command: ``state`` reports the last state labctl switched to, and raises
  NotSupported before the first switch (nothing can be read back).

What may go wrong: a non-zero exit of ``on``/``off`` (DriverError with the exit code and
the end of stderr), a command running past ``timeout`` (killed, DriverError), a command
that does not exist (exit 127 from the shell, or DriverError from exec for a list).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from typing import Any

import trio
from pydantic import field_validator

from labctl.errors import DriverError, NotSupported

from ..driver import DriverConfig
from .interface import PowerDriver

Command = str | list[str]


class ShellConfig(DriverConfig):
    on: Command
    off: Command
    state: Command | None = None
    on_output: str | None = None
    off_output: str | None = None
    timeout: float = 10.0
    env: dict[str, str] = {}
    cwd: str | None = None

    @field_validator("on", "off", "state")
    @classmethod
    def _not_empty(cls, v: Command | None) -> Command | None:
        if v is not None and not (v.strip() if isinstance(v, str) else v):
            raise ValueError("command must not be empty")
        return v

    @field_validator("on_output", "off_output")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("timeout must be > 0")
        return v


async def _kill_group(proc: trio.Process) -> None:
    """Cancel delivery for trio.run_process: SIGTERM the process group, SIGKILL after 1 s."""
    for sig, grace in ((signal.SIGTERM, 1.0), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        if grace is None:
            return
        with trio.move_on_after(grace):
            await proc.wait()
            return


class ShellPower(PowerDriver):
    """An outlet driven by configured commands; see the module docstring for state rules."""

    Config = ShellConfig
    config: ShellConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._commanded: bool | None = None

    async def set_power(self, on: bool) -> None:
        await self._run("on" if on else "off")
        self._commanded = on

    async def get_power(self) -> bool:
        cfg = self.config
        if cfg.state is None:
            if self._commanded is None:
                raise NotSupported(f"{self.name}: no 'state' command, and not switched yet")
            return self._commanded
        if cfg.on_output is None:
            result = await self._run("state", ok_codes=(0, 1))
            return result.returncode == 0
        out = (await self._run("state")).stdout.decode("utf-8", "replace")
        if re.search(cfg.on_output, out):
            return True
        if cfg.off_output is None or re.search(cfg.off_output, out):
            return False
        raise DriverError(
            f"{self.name}: state output matches neither on_output nor off_output: {_tail(out)!r}"
        )

    async def _run(
        self, which: str, ok_codes: tuple[int, ...] = (0,)
    ) -> subprocess.CompletedProcess[bytes]:
        command = getattr(self.config, which)
        env = {**os.environ, **self.config.env, "LABCTL_DEVICE": self.name}
        try:
            with trio.fail_after(self.config.timeout):
                result = await trio.run_process(
                    command,
                    shell=isinstance(command, str),
                    check=False,
                    capture_stdout=True,
                    capture_stderr=True,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    cwd=self.config.cwd,
                    start_new_session=True,
                    deliver_cancel=_kill_group,
                )
        except trio.TooSlowError:
            raise DriverError(
                f"{self.name}: {which} command timed out after {self.config.timeout}s (killed)"
            ) from None
        except OSError as exc:  # a list command that cannot be executed
            raise DriverError(f"{self.name}: cannot run {which} command: {exc}") from None
        if result.returncode not in ok_codes:
            err = _tail(result.stderr.decode("utf-8", "replace")) or "no stderr"
            raise DriverError(
                f"{self.name}: {which} command failed (exit {result.returncode}): {err}",
                {"stderr": result.stderr.decode("utf-8", "replace"), "exit": result.returncode},
            )
        return result


def _tail(text: str, limit: int = 200) -> str:
    """The last non-empty line, shortened: enough for a one-line error."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return last if len(last) <= limit else "…" + last[-limit:]
