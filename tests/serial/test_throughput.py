"""64 MiB through a console stream, byte-exact, with the rate printed (-s to see it).

The far side of the pty runs in a thread, as it would be another process; it checks a
stop flag at least every 0.1 s so a failing test never leaves it blocked.
"""

from __future__ import annotations

import hashlib
import os
import select
import threading
import time
from pathlib import Path

import trio

from .helpers import Pty, running, trio_test

TOTAL = 64 << 20
AHEAD = 512 << 10  # the writer stays this far ahead of the reader: half the ring


@trio_test
async def test_64_mib_pass_through_a_console_stream_unchanged(tmp_path: Path) -> None:
    """A UART has no flow control towards us, so the writer here plays a client that
    keeps up: it never gets more than half the scrollback ahead of what arrived."""
    pty = Pty(tmp_path / "tty")
    payload = os.urandom(TOTAL)
    received = 0
    progress = threading.Condition()
    stop = threading.Event()

    def write_all() -> None:
        view, sent = memoryview(payload), 0
        while sent < TOTAL and not stop.is_set():
            with progress:
                if not progress.wait_for(lambda s=sent: s - received < AHEAD, timeout=0.1):
                    continue
            if select.select([], [pty.master], [], 0.1)[1]:
                try:
                    sent += os.write(pty.master, view[sent : sent + 65536])
                except BlockingIOError:
                    pass

    writer = threading.Thread(target=write_all)
    try:
        async with running(tmp_path / "tty") as run:
            stream = await run.stream()
            digest = hashlib.sha256()
            started = time.perf_counter()
            writer.start()
            with trio.fail_after(60):
                while received < TOTAL:
                    data, meta = await stream.client_receive()
                    assert meta == {"offset": received}  # no gap, no reordering
                    digest.update(data)
                    with progress:
                        received += len(data)
                        progress.notify()
            elapsed = time.perf_counter() - started
    finally:
        stop.set()
        if writer.is_alive():
            writer.join()
        pty.close()
    assert digest.hexdigest() == hashlib.sha256(payload).hexdigest()
    print(f"\nconsole stream, pty -> client: {TOTAL / elapsed / 2**20:.0f} MiB/s")


@trio_test
async def test_16_mib_written_into_a_console_stream_reach_the_port(tmp_path: Path) -> None:
    pty = Pty(tmp_path / "tty")
    total = 16 << 20
    payload = os.urandom(total)
    digest = hashlib.sha256()
    stop = threading.Event()

    def read_all() -> None:
        got = 0
        while got < total and not stop.is_set():
            if select.select([pty.master], [], [], 0.1)[0]:
                data = os.read(pty.master, 65536)
                digest.update(data)
                got += len(data)

    reader = threading.Thread(target=read_all)
    try:
        async with running(tmp_path / "tty") as run:
            stream = await run.stream(writable=True)
            started = time.perf_counter()
            reader.start()
            with trio.fail_after(60):
                for at in range(0, total, 65536):
                    await stream.client_send(payload[at : at + 65536])
                await trio.to_thread.run_sync(reader.join)
            elapsed = time.perf_counter() - started
    finally:
        stop.set()
        if reader.is_alive():
            reader.join()
        pty.close()
    assert digest.hexdigest() == hashlib.sha256(payload).hexdigest()
    print(f"\nconsole stream, client -> pty: {total / elapsed / 2**20:.0f} MiB/s")
