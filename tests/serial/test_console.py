"""The SDK console's pexpect behaviour over a socketpair (no board needed)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pexpect
import pytest

from labctl.console import Console, FdTransport


@pytest.fixture
def pair() -> Iterator[tuple[Console, socket.socket]]:
    mine, theirs = socket.socketpair()
    con = Console(FdTransport(mine.detach()), timeout=5)
    yield con, theirs
    con.close()
    theirs.close()


def test_expect_before_after_and_match_work_as_in_pexpect(
    pair: tuple[Console, socket.socket],
) -> None:
    con, board = pair
    board.sendall(b"Hit any key to stop autoboot:  3\r\n=> ")
    assert con.expect([r"autoboot:\s+(\d)", "=> "]) == 0
    assert con.match.group(1) == "3"
    assert con.before == "Hit any key to stop "
    con.expect_exact("=> ")
    assert (con.before, con.after) == ("\r\n", "=> ")
    con.sendline("version")
    assert board.recv(100) == b"version\n"
    board.sendall(b"U-Boot 2024.01\r\n=> ")
    con.expect_exact("=> ")
    assert con.before == "U-Boot 2024.01\r\n"
    with pytest.raises(pexpect.TIMEOUT):
        con.expect("never", timeout=0.05)


def test_utf8_split_across_reads_and_stray_bytes_decode(
    pair: tuple[Console, socket.socket],
) -> None:
    con, board = pair
    board.sendall("caf\u00e9".encode()[:4])
    assert con.read_nonblocking(100, timeout=5) == "caf"  # half a character waits
    board.sendall(b"\xa9 \xff!")
    con.expect_exact("!")
    assert con.before == "\u00e9 \ufffd"  # the stray byte is replaced, not an error


def test_raw_reads_hand_out_what_arrived_in_pieces(pair: tuple[Console, socket.socket]) -> None:
    con, board = pair
    board.sendall(bytes(range(10)))
    assert con.read_bytes(4) == bytes(range(4))
    assert con.read_bytes(100, timeout=0) == bytes(range(4, 10))
    with pytest.raises(pexpect.TIMEOUT):
        con.read_bytes(1, timeout=0)
    con.send(b"\x00\xff")
    con.sendcontrol("c")
    con.sendline(b"raw")
    assert board.recv(100) == b"\x00\xff\x03raw\n"


def test_end_of_stream_is_eof_and_a_closed_console_refuses_reads(
    pair: tuple[Console, socket.socket],
) -> None:
    con, board = pair
    board.sendall(b"bye\r\n")
    board.close()
    assert con.expect(["bye", pexpect.EOF]) == 0
    assert con.expect(["bye", pexpect.EOF]) == 1
    assert not con.isalive() and con.eof()
    con.close()
    with pytest.raises(ValueError):
        con.read_nonblocking(1)


def test_a_failed_expect_shows_what_the_console_printed(
    pair: tuple[Console, socket.socket],
) -> None:
    con, board = pair
    board.sendall(b"x" * 5000 + b"\r\nKernel panic - not syncing: VFS\r\n")
    con.expect_exact("\r\n")  # consumes the x's: they are before the last match
    with pytest.raises(pexpect.TIMEOUT) as failed:
        con.expect("login:", timeout=0.2)
    text = str(failed.value)
    assert "Kernel panic - not syncing: VFS" in text
    assert "object at 0x" not in text and "x" * 100 not in text
    board.sendall(b"y" * 3000)
    with pytest.raises(pexpect.TIMEOUT) as failed:
        con.expect("login:", timeout=0.2)
    assert "last 2048 of 3" in str(failed.value)  # ~2 KiB, the newest
