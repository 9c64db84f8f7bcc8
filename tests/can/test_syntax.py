"""can-utils syntax and SocketCAN filter semantics, as pure functions (no processes)."""

from __future__ import annotations

import can
import pytest

import labctl.cli.main  # noqa: F401  (the CLI's modules import in this order)
from labctl.can import pack, pack_lost, unpack
from labctl.cli.can_cmds import format_frame, parse_filter, parse_frame, parse_log_line
from labctl.errors import BadArguments
from labctl.services.can.fanout import Reader


@pytest.mark.parametrize(
    ("text", "kwargs"),
    [
        ("123#DEADBEEF", {"id": 0x123, "extended": False, "data": b"\xde\xad\xbe\xef"}),
        ("00000123#", {"id": 0x123, "extended": True, "data": b""}),
        ("1F334455#11.22.33", {"id": 0x1F334455, "extended": True, "data": b"\x11\x22\x33"}),
        ("123#R", {"id": 0x123, "extended": False, "remote": True, "dlc": 0}),
        ("123#R7", {"id": 0x123, "extended": False, "remote": True, "dlc": 7}),
        ("123##1" + "AA" * 12, {"id": 0x123, "extended": False, "fd": True, "brs": True, "data": b"\xaa" * 12}),
        ("123##0", {"id": 0x123, "extended": False, "fd": True, "brs": False, "data": b""}),
    ],
)  # fmt: skip
def test_cansend_syntax(text: str, kwargs: dict) -> None:
    assert parse_frame(text) == kwargs


@pytest.mark.parametrize(
    "text", ["123#DEADBEEF", "12345678#1122", "321#R", "321#R3", "123##1" + "00" * 12, "123##0"]
)
def test_candump_format_reads_back(text: str) -> None:
    from labctl.can import message

    kwargs = parse_frame(text)
    assert format_frame(message(**kwargs)) == text
    assert parse_log_line(f"(1700000000.123456) can0 {text}\n") == (
        1700000000.123456,
        "can0",
        kwargs,
    )


def test_a_bad_frame_inside_a_log_line_points_into_the_line() -> None:
    with pytest.raises(BadArguments) as err:
        parse_log_line("(1.000000) can0 123#DEADBEEX")
    assert "column 28:" in err.value.message and err.value.message.endswith("\n  " + " " * 27 + "^")


@pytest.mark.parametrize(
    ("text", "frames_passing"),
    [
        ("123:7FF", {(0x123, False), (0x123, True)}),  # the mask has no EFF bit: both pass
        ("123:C00007FF", {(0x123, False)}),  # EFF and RTR in the mask: standard data frames only
        ("00000123:1FFFFFFF", {(0x123, False), (0x123, True)}),
        ("00000123:DFFFFFFF", {(0x123, True)}),  # 8 digits set EFF in the id; EFF in the mask
        ("100~700", {(0x200, False), (0x200, True)}),
    ],
)  # fmt: skip
def test_candump_filters_follow_socketcan(text: str, frames_passing: set) -> None:
    f = parse_filter(text)
    reader = Reader([(f["id"], f["mask"], f["invert"])], 0, True, 1 << 20)
    passing = set()
    for ident in (0x123, 0x200, 0x1AB):
        for ext in (False, True):
            full = ident | (0x80000000 if ext else 0)
            if reader.accepts(full, False, False):
                passing.add((ident, ext))
    assert passing == frames_passing


def test_error_frames_only_with_a_matching_errmask() -> None:
    assert parse_filter("#000000FF") == {"errmask": 0xFF}
    reader = Reader([], 0x04, True, 1 << 20)
    assert reader.accepts(0x04, True, False) and not reader.accepts(0x08, True, False)
    assert not Reader([], 0, True, 1 << 20).accepts(0x04, True, False)


def test_records_round_trip_and_report_losses() -> None:
    msgs = [can.Message(arbitration_id=0x123, data=b"\x01\x02", is_extended_id=False, timestamp=5.0),
            can.Message(arbitration_id=0x1ABCDEF0, data=bytes(64), is_fd=True, bitrate_switch=True, timestamp=6.0),
            can.Message(arbitration_id=0x7FF, is_remote_frame=True, dlc=3, is_extended_id=False, timestamp=7.0)]  # fmt: skip
    buf = b"".join(pack(m) for m in msgs) + pack_lost(42)
    got, used = unpack(buf[:-5])  # a record cut short waits for the rest
    assert used < len(buf) - 5 and len(got) == 3
    got, used = unpack(buf)
    assert used == len(buf) and got[3] == 42
    for a, b in zip(msgs, got[:3], strict=True):
        assert a.equals(b, timestamp_delta=0), (a, b)


def test_a_slow_reader_drops_past_its_buffer_and_says_how_many_in_band() -> None:
    reader = Reader([], 0, True, limit=100)
    record = pack(can.Message(arbitration_id=1, data=bytes(8), is_extended_id=False))
    for _ in range(10):
        reader.add(record)
    assert reader.size >= 100 and reader.lost == 10 - len(reader.records)
    lost = reader.lost
    reader.records, reader.size = [], 0  # the stream took what it had
    reader.add(record)
    got, _ = unpack(b"".join(reader.records))
    assert got[0] == lost and isinstance(got[1], can.Message)
