"""A port that disappears and comes back: status events, liveness, data again."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from labctl.errors import DeviceOffline

from .helpers import WAIT, Pty, running, trio_test


@trio_test
async def test_unplugged_pty_is_reported_and_used_again_when_it_returns(tmp_path: Path) -> None:
    link = tmp_path / "ttyUSB0"
    pty = Pty(link)
    async with running(link) as run:
        driver, events = run.driver, run.events
        stream = await run.stream(writable=True)
        await pty.write(b"before\r\n")
        with trio.fail_after(WAIT):
            assert await stream.client_read(8) == (0, b"before\r\n")

        pty.close()  # the adapter is unplugged
        await events.wait_for_status("port", "disconnected")
        status = await driver.status()
        assert status["port"] == "disconnected" and status["error"]
        with pytest.raises(DeviceOffline):
            await driver.send("lost\r")
        await stream.client_send(b"typed while unplugged")
        await trio.testing.wait_all_tasks_blocked()
        assert (await driver.status())["dropped"] == 21

        pty = Pty(link)  # plugged back (a new pty behind the same name)
        await events.wait_for_status("port", "connected", count=2)
        await pty.write(b"after\r\n")
        with trio.fail_after(WAIT):
            assert await stream.client_read(7) == (8, b"after\r\n")  # offsets go on
        await stream.client_send(b"ls\r")
        assert await pty.read(3) == b"ls\r"
    pty.close()

    assert events.statuses("port") == ["connected", "disconnected", "connected"]
    assert [online for online, _ in events.online] == [True, False, True]
    assert events.online[1][1].startswith("serial port: ")


@trio_test
async def test_a_port_missing_at_start_comes_online_when_it_appears(tmp_path: Path) -> None:
    link = tmp_path / "ttyACM0"
    async with running(link) as run:
        assert run.events.statuses("port") == ["disconnected"]
        assert "cannot open" in run.events.events[0][1]["error"]
        pty = Pty(link)
        await run.events.wait_for_status("port", "connected")
        assert await run.driver.send(b"\r") == 1
        assert await pty.read(1) == b"\r"
    pty.close()


@trio_test
async def test_dropped_socket_reconnects(tmp_path: Path) -> None:
    """``socket://`` (ser2net and friends): the server goes away and comes back."""
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    async with running(f"socket://127.0.0.1:{port}") as run:
        conn, _ = await listener.accept()
        await run.events.wait_for_status("port", "connected")
        stream = await run.stream({"since": 0})
        await conn.send(b"ser2net says hi")
        with trio.fail_after(WAIT):
            assert await stream.client_read(15) == (0, b"ser2net says hi")
        conn.close()
        await run.events.wait_for_status("port", "disconnected")
        conn, _ = await listener.accept()  # the driver dialled again
        await run.events.wait_for_status("port", "connected", count=2)
        await run.driver.send("again")
        assert await conn.recv(5) == b"again"
    conn.close()
    listener.close()
