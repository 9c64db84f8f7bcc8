"""When the broker gives freed heap back: during a burst, and twice once it is over."""

from __future__ import annotations

import pytest

from labctl.broker import upkeep


def test_a_burst_is_trimmed_while_it_lasts_and_twice_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trims: list[int] = []
    now = [0]
    heap = upkeep.HeapTrim()
    monkeypatch.setattr(upkeep, "trim_heap", lambda: trims.append(now[0]))
    per_tick = [0, 5, 30_000, 30_000, 100, 0, 3_000, 0, 0, 0, 0, 0, 0, 10]
    for now[0], messages in enumerate(per_tick):
        heap.handled += messages
        heap.tick()
    # a quiet broker never trims; the burst (ticks 2, 3) does; it ends at tick 4 (quiet),
    # is busy again at 6 (quiet count restarts), settles at 7..10: trims at 7 and 10
    assert trims == [2, 3, 4, 7, 10]
