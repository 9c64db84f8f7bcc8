"""~50k mutated messages from many identities against a live broker with a registered
service, while a legit client calls through it: no crash, no ``internal``, no failed
legit call (issue 10). bench/fuzz.py runs the same for 1M messages."""

from __future__ import annotations

import os
from pathlib import Path

from tests.fuzz.mutator import Legit, fuzz, rss_kib
from tests.harness import LabHarness, power_service, wait_until

COUNT = int(os.environ.get("LABCTL_FUZZ_COUNT", "50000"))


def test_fifty_thousand_mutated_messages_crash_nothing_and_answer_no_internal(
    workdir: Path,
) -> None:
    lab = LabHarness(workdir, heartbeat=0.5, grace="2s")
    try:
        broker = lab.start_broker()
        service = lab.start_service(power_service())
        legit = Legit(lab.bus)
        legit.start()
        wait_until(lambda: legit.latencies, 10, "the legit client's first call")
        before = rss_kib(broker.pid)
        tally = fuzz(lab.bus, COUNT, seed=int(os.environ.get("LABCTL_FUZZ_SEED", "10")))
        legit.stop.set()
        legit.join(20)
        assert broker.alive() and service.alive(), "a crash"
        assert tally.internal == [], tally.internal[:5]
        assert "handler failed" not in broker.output()
        assert legit.failures == [], legit.failures[:5]
        assert len(legit.latencies) > 20
        # the broker still works for everyone, and says what it refused
        assert lab.lab().device("pdu1.1").state() in ("on", "off")
        assert tally.codes.get("bad-request", 0) > 0 and tally.codes.get("protocol", 0) > 0
        print(f"fuzz: {tally.sent} sent, {tally.replies} replies, codes {tally.codes}, "
              f"broker RSS {before} -> {rss_kib(broker.pid)} KiB")  # fmt: skip
    finally:
        lab.close()
