"""The serial driver over real ptys: data both ways, scrollback, resume, settings."""

from __future__ import annotations

import termios
from pathlib import Path

import pytest
import trio
from pydantic import ValidationError

from labctl.errors import BadArguments, BadRequest, NotSupported

from .helpers import WAIT, MemoryStream, Pty, make_driver, running, trio_test


@trio_test
async def test_data_flows_both_ways_between_pty_and_console_stream(tmp_path: Path) -> None:
    pty = Pty(tmp_path / "tty")
    async with running(tmp_path / "tty") as run:
        assert run.events.statuses("port") == ["connected"]
        stream = await run.stream(writable=True)
        await pty.write(b"U-Boot 2024.01\r\n=> ")
        with trio.fail_after(WAIT):
            assert await stream.client_read(19) == (0, b"U-Boot 2024.01\r\n=> ")

        await stream.client_send(b"version\r")
        assert await pty.read(8) == b"version\r"
        assert await run.driver.send("printenv\r") == 9
        assert await pty.read(9) == b"printenv\r"

        status = await run.driver.status()
        assert status["port"] == "connected" and status["end"] == 19
        assert (status["streams"], status["writers"]) == (1, 1)
    pty.close()


@trio_test
async def test_log_returns_scrollback_by_offset_and_tail(tmp_path: Path) -> None:
    pty = Pty(tmp_path / "tty")
    async with running(tmp_path / "tty", scrollback=4096) as run:
        watcher = await run.stream({"since": 0})
        boot = bytes(i % 251 for i in range(10_000))
        await pty.write(boot)
        with trio.fail_after(WAIT):
            await watcher.client_wait_for_offset(len(boot))  # the driver read it all

        log = run.driver.log
        epoch = run.driver.epoch
        assert await log() == {"offset": 5904, "data": boot[5904:], "end": 10_000, "epoch": epoch}
        assert await log(since=9000) == {
            "offset": 9000, "data": boot[9000:], "end": 10_000, "epoch": epoch
        }  # fmt: skip
        assert (await log(tail=10))["data"] == boot[-10:]
        lost = await log(since=100)  # overwritten: the answer starts later
        assert lost["offset"] == 5904 and lost["data"] == boot[5904:]
        assert (await log(since=9000, tail=500))["offset"] == 9500
        assert await log(since=20_000) == {
            "offset": 10_000, "data": b"", "end": 10_000, "epoch": epoch
        }  # fmt: skip
        with pytest.raises(BadArguments):
            await log(since="10")  # type: ignore[arg-type]
    pty.close()


@trio_test
async def test_stream_resumes_exactly_at_an_offset_then_follows_live_data(
    tmp_path: Path,
) -> None:
    pty = Pty(tmp_path / "tty")
    async with running(tmp_path / "tty") as run:
        first = await run.stream()
        await pty.write(b"line one\r\nline two\r\n")
        with trio.fail_after(WAIT):
            offset, seen = await first.client_read(10)  # the client saw "line one\r\n"...
        assert (offset, seen[:10]) == (0, b"line one\r\n")

        # ...then reconnects, asking for everything after what it saw.
        resumed = await run.stream({"since": 10})
        tailing = await run.stream({"tail": 4})
        with trio.fail_after(WAIT):
            assert await resumed.client_read(10) == (10, b"line two\r\n")
            assert await tailing.client_read(4) == (16, b"wo\r\n")
            await pty.write(b"login: ")
            assert await resumed.client_read(7) == (20, b"login: ")
            assert await tailing.client_read(7) == (20, b"login: ")
    pty.close()


@trio_test
async def test_slow_stream_gets_a_gap_notice_and_never_stalls_the_port(tmp_path: Path) -> None:
    pty = Pty(tmp_path / "tty")
    async with running(tmp_path / "tty", scrollback=8192) as run:
        slow = await run.stream(window=1024)  # stops reading after its first frame
        fast = await run.stream()
        await pty.write(b"a" * 100)
        with trio.fail_after(WAIT):
            assert await slow.client_read(100) == (0, b"a" * 100)
            assert await fast.client_read(100) == (0, b"a" * 100)
        data = bytes(range(256)) * 200  # 51200 bytes: six rings' worth
        with trio.fail_after(WAIT):
            for at in range(0, len(data), 4096):  # the fast reader keeps up
                await pty.write(data[at : at + 4096])
                piece = await fast.client_read(len(data[at : at + 4096]))
                assert piece == (100 + at, data[at : at + 4096])

        # The slow stream held one chunk it had already taken; after it, it skips ahead.
        full, position, gaps = b"a" * 100 + data, 100, []
        while position < len(full):
            frame, meta = await slow.client_receive()
            if "gap" in meta:
                gaps.append(meta)
                assert meta["gap"] == meta["offset"] - position
            else:
                assert meta["offset"] == position
            assert frame == full[meta["offset"] : meta["offset"] + len(frame)]
            position = meta["offset"] + len(frame)
        assert len(gaps) == 1 and gaps[0]["offset"] == len(full) - 8192
    pty.close()


@trio_test
async def test_settings_and_break_reach_the_port_and_reset_restores_them(
    tmp_path: Path,
) -> None:
    pty = Pty(tmp_path / "tty")
    async with running(tmp_path / "tty") as run:
        driver = run.driver
        assert await getattr(driver, "break")(duration=0.0) == "break"
        new = await driver.settings(baudrate=9600, stopbits=2)
        assert (new["baudrate"], new["stopbits"]) == (9600, 2)
        assert driver._port is not None and driver._port.ser.baudrate == 9600
        with pytest.raises(BadArguments, match="parity"):
            await driver.settings(parity="X")

        writer, reader = await run.stream(writable=True), await run.stream()
        await driver.reset()
        with trio.fail_after(WAIT), pytest.raises(trio.EndOfChannel):
            await writer.client_receive()
        assert writer.close_reason == "the lease on this device ended"
        assert reader.close_reason is None
        assert (await driver.status())["settings"]["baudrate"] == 115200
        assert driver._port.ser.baudrate == 115200
        with pytest.raises(BadRequest):
            await driver.open_stream("frames", MemoryStream())
    pty.close()


@trio_test
async def test_settings_the_port_refuses_are_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pty = Pty(tmp_path / "tty")
    async with running(tmp_path / "tty") as run:
        assert run.driver._port is not None
        ser = run.driver._port.ser
        real_apply = ser.apply_settings

        def picky_apply(settings: dict[str, object]) -> None:
            if settings["bytesize"] != 8:
                raise termios.error(22, "Invalid argument")  # what a pty here says
            real_apply(settings)

        monkeypatch.setattr(ser, "apply_settings", picky_apply)
        with pytest.raises(NotSupported, match="refused"):
            await run.driver.settings(bytesize=7)
        assert (await run.driver.status())["settings"]["bytesize"] == 8
        assert await run.driver.send("still works") == 11
        assert await pty.read(11) == b"still works"
    pty.close()


def test_interface_exports_break_and_marks_what_mutates() -> None:
    driver, _ = make_driver("loop://")
    iface = driver.interface()
    assert iface["kind"] == "serial"
    assert iface["streams"] == {"console": {"writable": True}}
    mutating = {name: m["mutating"] for name, m in iface["methods"].items()}
    assert mutating == {
        "send": True,
        "break": True,
        "settings": True,
        "log": False,
        "status": False,
    }
    assert [a["name"] for a in iface["methods"]["log"]["args"]] == ["since", "tail", "epoch"]


def test_config_names_the_bad_field() -> None:
    with pytest.raises(ValidationError, match="url"):
        make_driver("nosuch://host:1")
    with pytest.raises(ValidationError, match="stopbits"):
        make_driver("/dev/ttyS0", stopbits=3)
    with pytest.raises(ValidationError, match="baudrate"):
        make_driver("/dev/ttyS0", baudrate=0)


@trio_test
async def test_loop_url_goes_through_the_threaded_bridge() -> None:
    async with running("loop://") as run:
        stream = await run.stream({"since": 0})
        await run.driver.send(b"echo me\n")  # loop:// reads back what it is sent
        with trio.fail_after(WAIT):
            assert await stream.client_read(8) == (0, b"echo me\n")
    assert run.events.statuses("port") == ["connected"]
