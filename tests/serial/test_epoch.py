"""A serial service restart starts a new scrollback epoch (issue 9.27): a reader that
resumes across it is told what was lost and reads the new run's bytes, not wrong ones."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pexpect
import pytest

from ..harness import LABCTL, LabHarness, wait_until
from ..test_streams import Pty, serial_service


@pytest.fixture
def pty() -> Iterator[Pty]:
    p = Pty()
    yield p
    p.close()


def _read(stream: object, n: int) -> bytes:
    got = b""
    while len(got) < n:
        got += stream.read_some(30)  # type: ignore[attr-defined]
    return got


def test_a_reader_resuming_across_a_service_restart_is_told_what_was_lost(
    harness: LabHarness, pty: Pty
) -> None:
    harness.start_broker()
    svc = harness.start_service(serial_service("ser1", pty.path))
    lab = harness.lab()
    dev = lab.device("ser1")
    first = dev.log()
    stream = dev.stream("console", since=0)
    old = b"old run: " + b"x" * 991  # 1000 bytes
    pty.write_all(old)
    assert _read(stream, len(old)) == old
    assert stream.offset == 1000

    svc.kill(signal.SIGKILL)
    harness.wait_online(["ser1"], online=False)
    harness.start_service(serial_service("ser1", pty.path))
    new = b"new run\r\n"
    pty.write_all(new)  # before the reader is back: offsets 0..9 of the new run
    assert _read(stream, len(new)) == new  # not skipped, not read as offsets 1000+
    assert stream.offset == len(new)
    (restart,) = stream.restarts
    assert restart["was"] == first["epoch"] != restart["epoch"]
    assert (restart["at"], restart["lost"]) == (1000, 0)

    # the log call tells the same to a reader that comes back with an old epoch
    again = lab.device("ser1").log(since=1000, epoch=first["epoch"])
    assert again["data"] == new and again["restarted"] == {"was": first["epoch"], "lost": 0}
    stream.close()


def test_log_follow_says_when_the_service_restarted(harness: LabHarness, pty: Pty) -> None:
    harness.start_broker()
    svc = harness.start_service(serial_service("ser1", pty.path))
    pty.write_all(b"first run\r\n")
    child = pexpect.spawn(
        LABCTL[0], [*LABCTL[1:], "serial", "log", "ser1", "-f"], env=harness.env, timeout=30
    )
    try:
        child.expect_exact("first run")
        dev = harness.lab().device("ser1")
        wait_until(lambda: dev.status()["streams"] == 1, 10, "log -f to attach")
        svc.kill(signal.SIGKILL)
        harness.wait_online(["ser1"], online=False)
        harness.start_service(serial_service("ser1", pty.path))
        pty.write_all(b"second run\r\n")
        child.expect_exact("[labctl] the serial service restarted: output after offset 11")
        child.expect_exact("second run")
    finally:
        child.terminate(force=True)
