"""The scrollback ring: absolute offsets, wrap-around, clamping."""

from __future__ import annotations

import random

import pytest

from labctl.services.serial.ring import ScrollbackRing


def test_offsets_count_every_byte_ever_appended() -> None:
    ring = ScrollbackRing(8)
    assert (ring.start, ring.end, len(ring)) == (0, 0, 0)
    assert ring.append(b"abc") == 0
    assert ring.append(b"defg") == 3
    assert (ring.start, ring.end) == (0, 7)
    assert ring.read(0) == (0, b"abcdefg")
    assert ring.read(2, 3) == (2, b"cde")


def test_wrap_keeps_the_newest_bytes_at_their_absolute_offsets() -> None:
    ring = ScrollbackRing(8)
    ring.append(b"0123456")
    ring.append(b"789ab")  # wraps: 12 bytes written into 8
    assert (ring.start, ring.end) == (4, 12)
    assert ring.read(4) == (4, b"456789ab")
    assert ring.read(6, 4) == (6, b"6789")
    assert ring.read(10) == (10, b"ab")


def test_read_before_start_is_clamped_to_what_is_kept() -> None:
    ring = ScrollbackRing(8)
    ring.append(b"x" * 20)
    offset, data = ring.read(3, 5)
    assert offset == ring.start == 12  # the caller can tell it lost 12 - 3 bytes
    assert data == b"xxxxx"


def test_read_at_or_past_end_is_empty_at_end() -> None:
    ring = ScrollbackRing(8)
    ring.append(b"hello")
    assert ring.read(5) == (5, b"")
    assert ring.read(99) == (5, b"")
    assert ring.read(0, 0) == (0, b"")


def test_an_append_larger_than_the_ring_keeps_its_tail() -> None:
    ring = ScrollbackRing(8)
    ring.append(b"ab")
    assert ring.append(bytes(range(30))) == 2
    assert (ring.start, ring.end) == (24, 32)
    assert ring.read(0) == (24, bytes(range(22, 30)))


def test_tail_returns_the_newest_bytes() -> None:
    ring = ScrollbackRing(8)
    ring.append(b"0123456789")
    assert ring.tail(3) == (7, b"789")
    assert ring.tail(100) == (2, b"23456789")
    assert ring.tail(0) == (10, b"")


@pytest.mark.parametrize("size", [1, 7, 64, 4096])
def test_random_appends_and_reads_match_a_plain_byte_string(size: int) -> None:
    rng = random.Random(size)
    ring = ScrollbackRing(size)
    everything = bytearray()
    for _ in range(300):
        chunk = rng.randbytes(rng.randrange(0, 3 * size))
        assert ring.append(chunk) == len(everything)
        everything += chunk
        since = rng.randrange(0, len(everything) + 2)
        limit = rng.choice([None, rng.randrange(0, 2 * size + 1)])
        offset, data = ring.read(since, limit)
        assert offset == min(max(since, len(everything) - size, 0), len(everything))
        expected = everything[offset:] if limit is None else everything[offset : offset + limit]
        assert data == expected
    assert ring.read(0)[1] == everything[-size:]
