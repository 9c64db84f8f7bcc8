"""The SDK console (pexpect API) against the simulated DUT, directly and via the driver."""

from __future__ import annotations

import os
import queue
import threading
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pexpect
import pytest
import trio

from labctl.console import Console, FdTransport

from .helpers import WAIT, MemoryStream, Recorder, SimDut, make_driver


def open_console(link: Path, **kwargs: Any) -> Console:
    fd = os.open(link, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    return Console(FdTransport(fd), timeout=WAIT, **kwargs)


def test_console_expects_boot_log_login_and_shell(
    tmp_path: Path, simdut: Callable[..., SimDut]
) -> None:
    power = tmp_path / "power"
    simdut(tmp_path / "tty", power, "--hostname", "rpi4-01")
    with open_console(tmp_path / "tty") as con:
        power.write_text("on")
        con.expect(r"U-Boot (\S+)")
        assert con.match.group(1) == "2024.01-simdut"
        con.expect_exact("Starting kernel ...")
        assert con.expect(["Kernel panic", "rpi4-01 login: "]) == 1
        assert "Reached target Multi-User System" in con.before
        con.sendline("root")
        con.expect_exact("root@rpi4-01:~# ")
        con.sendline("uname -a")
        con.expect(r"Linux rpi4-01 (\S+)")
        assert con.match.group(1) == "6.6.20-simdut"
        con.expect_exact("# ")
        con.sendline("echo hello $USER")
        con.expect_exact("hello $USER\r\n")
        con.sendline("cat /etc/os-release")
        con.expect(r'VERSION_ID="(\d+)"')
        assert con.match.group(1) == "12"
        con.sendline("frobnicate")
        con.expect_exact("-sh: frobnicate: not found")
        con.sendline("exit")
        con.expect_exact("rpi4-01 login: ")
        with pytest.raises(pexpect.TIMEOUT):
            con.expect_exact("# ", timeout=0.01)  # logged out: no prompt comes


def test_power_off_silences_the_board_and_power_on_boots_it_again(
    tmp_path: Path, simdut: Callable[..., SimDut]
) -> None:
    power = tmp_path / "power"
    dut = simdut(tmp_path / "tty", power)
    with open_console(tmp_path / "tty", encoding=None) as con:  # pexpect's bytes mode
        power.write_text("on")
        dut.wait_line("simdut power on")
        con.expect(b"login: ")
        con.send(b"roox\x7ft\r")  # a typo, a backspace, Enter as a terminal sends it
        con.expect(b"~# ")
        power.write_text("off")
        dut.wait_line("simdut power off")
        power.write_text("on")
        dut.wait_line("simdut power on")
        con.expect(b"U-Boot")
        assert b"~# " not in con.before
        con.expect(b"login: ")
        con.sendcontrol("c")
        con.expect_exact(b"^C\r\nsimdut login: ")
        con.send("caf\u00e9\r")  # str in bytes mode is UTF-8, as in pexpect
        con.expect_exact(b"caf\xc3\xa9")
        assert isinstance(con.before, bytes)


def test_a_killed_board_is_pexpect_eof(tmp_path: Path, simdut: Callable[..., SimDut]) -> None:
    dut = simdut(tmp_path / "tty", tmp_path / "power")
    con = open_console(tmp_path / "tty")
    dut.stop(kill=True)
    assert con.expect([pexpect.EOF, "login:"]) == 0
    assert not con.isalive()
    con.close()


class StreamTransport:
    """How the SDK can put a Console on a console stream: blocking calls into trio."""

    def __init__(self, stream: MemoryStream, token: trio.lowlevel.TrioToken) -> None:
        self.stream, self.token = stream, token

    def read_some(self, timeout: float | None) -> bytes:
        async def receive() -> bytes:
            with trio.move_on_after(float("inf") if timeout is None else timeout):
                try:
                    return (await self.stream.client_receive())[0]
                except trio.EndOfChannel:
                    return b""
            raise TimeoutError

        return trio.from_thread.run(receive, trio_token=self.token)  # type: ignore[no-any-return]

    def write(self, data: bytes) -> None:
        trio.from_thread.run(self.stream.client_send, data, trio_token=self.token)

    def close(self) -> None:
        pass


@contextmanager
def console_stream(link: Path, stream: MemoryStream) -> Iterator[Recorder]:
    """A serial driver on ``link`` serving ``stream``, in a trio thread of its own."""
    ready: queue.Queue[trio.lowlevel.TrioToken] = queue.Queue()
    stop = threading.Event()
    driver, events = make_driver(str(link))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await driver.start(nursery)
            nursery.start_soon(driver.open_stream, "console", stream)
            ready.put(trio.lowlevel.current_trio_token())
            await trio.to_thread.run_sync(stop.wait)
            nursery.cancel_scope.cancel()

    thread = threading.Thread(target=trio.run, args=(main,))
    thread.start()
    try:
        events.token = ready.get(timeout=WAIT)  # type: ignore[attr-defined]
        yield events
    finally:
        stop.set()
        thread.join()


def test_console_over_the_console_stream_survives_a_board_restart(
    tmp_path: Path, simdut: Callable[..., SimDut]
) -> None:
    link, power = tmp_path / "tty", tmp_path / "power"
    dut = simdut(link, power)
    stream = MemoryStream({"since": 0}, writable=True)
    with console_stream(link, stream) as events:
        con = Console(StreamTransport(stream, events.token), timeout=WAIT)  # type: ignore[attr-defined]
        power.write_text("on")
        con.expect("login: ")
        con.sendline("root")
        con.expect_exact("# ")

        power.write_text("off")  # the next start must wait for the driver to reconnect
        dut.stop(kill=True)  # pulled out: the link now dangles
        trio.from_thread.run(
            events.wait_for_status, "port", "disconnected", trio_token=events.token
        )
        simdut(link, power)
        trio.from_thread.run(
            events.wait_for_status, "port", "connected", 2, trio_token=events.token
        )
        power.write_text("on")
        con.expect_exact("simdut login: ")
        con.sendline("root")
        con.sendline("uname")
        con.expect_exact("Linux\r\n")
        assert events.statuses("port") == ["connected", "disconnected", "connected"]
