"""How long one selector takes to match 10,000 devices' labels (best of 5, in ms).

Run: ``python bench/selector.py``. The broker's budget is 20 ms for the whole pass.
"""

from __future__ import annotations

import time

from labctl.selector import parse

QUERY = "board=rpi4, site in (lab1,lab2), !broken"


def devices(n: int) -> list[dict[str, str]]:
    """``n`` label dicts; roughly 1 in 12 matches QUERY."""
    boards, sites = ("rpi4", "rpi5", "stm32"), ("lab1", "lab2", "lab3", "home")
    out = []
    for i in range(n):
        labels = {"board": boards[i % 3], "site": sites[i % 4], "rack": f"r{i % 40}"}
        if i % 2:
            labels["broken"] = "yes"
        out.append(labels)
    return out


def bench(n: int = 10_000, repeat: int = 5) -> tuple[float, int]:
    """Best wall time in ms over ``repeat`` passes, and how many devices matched."""
    selector, labels = parse(QUERY), devices(n)
    best, matched = float("inf"), 0
    for _ in range(repeat):
        start = time.perf_counter()
        matched = sum(1 for d in labels if selector.matches(d))
        best = min(best, (time.perf_counter() - start) * 1000)
    return best, matched


if __name__ == "__main__":
    ms, matched = bench()
    print(f"{ms:.2f} ms to match 10000 devices against {QUERY!r} ({matched} matched, best of 5)")
