"""What ``labctl lab up`` prints: every process's output one record per line, prefixed by
the process name, and a one-line report when a part keeps failing (issue 9 items 4, 17)."""

from __future__ import annotations

import collections
import os
from pathlib import Path

import structlog
import trio

#: a process that exits this many times in a row, each soon after its start, is reported
FAILING_AFTER = 3
#: a run shorter than this (seconds) counts as a failure to start; a longer one resets the count
QUICK_EXIT = 30.0


class ProcessOutput:
    """One lab process's output: every line goes to lab up's stderr with the process name in
    front, in one write (records of several processes never share a line), and the last lines
    are kept to say why the process failed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.tail: collections.deque[str] = collections.deque(maxlen=20)

    def line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip()
        if text:
            self.tail.append(text)
        _write(f"{self.name} | {text}\n")

    async def pump(self, stream: trio.abc.ReceiveStream) -> None:
        """Print what ``stream`` carries, line by line, until it ends."""
        buf = b""
        async with stream:
            while chunk := await stream.receive_some(65536):
                *lines, buf = (buf + chunk).split(b"\n")
                for raw in lines:
                    self.line(raw)
        if buf:
            self.line(buf)

    def last_words(self) -> str:
        """The most telling line it printed: the last mentioning an error, else the last."""
        for text in reversed(self.tail):
            if "error" in text.lower():
                return text
        return self.tail[-1] if self.tail else "(it printed nothing)"


class FailureWatch:
    """Counts a process's quick exits; after FAILING_AFTER in a row says once, on one line,
    which part keeps failing and why (instead of a silent restart loop)."""

    def __init__(self, output: ProcessOutput) -> None:
        self.output = output
        self.in_a_row = 0
        self.reported = False

    @property
    def failing(self) -> bool:
        return self.in_a_row >= FAILING_AFTER

    def exited(self, rc: int | None, ran: float) -> None:
        if ran > QUICK_EXIT:
            self.in_a_row, self.reported = 0, False
        self.in_a_row += 1
        if self.in_a_row >= FAILING_AFTER and not self.reported:
            self.reported = True
            code = "no exit code: the fork server died" if rc is None else f"exit {rc}"
            _write(
                f"lab | {self.output.name} keeps failing ({code}, {self.in_a_row} times in a "
                f"row): {self.output.last_words()} (still retrying, every 30 s at most)\n"
            )


def service_output(name: str, directory: Path) -> tuple[str, trio.lowlevel.FdStream]:
    """A FIFO for service ``name``'s output (the fork server sends the child's stdout and
    stderr there) and its read end. lab up also holds a write end, so the reader never sees
    an end of file between restarts."""
    path = directory / f"{name}.out"
    os.mkfifo(path)
    read_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    os.open(path, os.O_WRONLY)  # kept open (and closed) with lab up: never EOF
    return str(path), trio.lowlevel.FdStream(read_fd)


class _PrefixedStderr:
    """lab up's own log records, prefixed like its processes' and written in one piece."""

    def write(self, text: str) -> None:
        _write(f"lab | {text}")

    def flush(self) -> None:
        pass


def prefix_own_logs() -> None:
    """Send lab up's own structlog records through ``_PrefixedStderr`` (after logs.setup)."""
    structlog.configure(logger_factory=structlog.WriteLoggerFactory(file=_PrefixedStderr()))  # type: ignore[arg-type]


def _write(text: str) -> None:
    """One write(2) to stderr, so lines of several processes never mix; a closed stderr (lab
    up piped into a pager that quit) must not stop the lab."""
    try:
        os.write(2, text.encode())
    except OSError:
        pass
