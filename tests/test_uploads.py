"""An upload: the writer ends its data and gets the service's verdict (a result or an error)."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest

from labctl.errors import BadArguments, StreamClosed

from .harness import LabHarness, Proc

SINK = Path(__file__).with_name("upload_sink.py")


@pytest.fixture
def sink_lab(harness: LabHarness) -> LabHarness:
    harness.start_broker()
    cfg = {"service": "sink1", "kind": "sink", "driver": "sink", "labels": {"dut": "board-1"}}
    path = harness.write_config(cfg)
    proc = Proc([sys.executable, str(SINK), str(path)], harness.root / "sink1.log", harness.env)
    harness.procs.append(proc.start())
    harness.wait_online(["sink1"])
    return harness


def test_finish_returns_the_result_the_service_closed_with(sink_lab: LabHarness) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # more than one credit window
    with sink_lab.lab().lease("dut=board-1") as lease, lease["sink1"].stream("upload") as up:
        for i in range(0, len(data), 100_000):
            up.write(data[i : i + 100_000])
        result = up.finish(timeout=10)
    assert result == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_a_returned_value_is_the_result(sink_lab: LabHarness) -> None:
    with sink_lab.lab().lease("dut=board-1") as lease:
        with lease["sink1"].stream("upload", by_return=True) as up:
            up.write(b"abc")
            assert up.finish(timeout=10)["how"] == "returned"
        with lease["sink1"].stream("upload") as up:  # nothing written: still a verdict
            assert up.finish(timeout=10) == {"size": 0, "sha256": hashlib.sha256().hexdigest()}


def test_finish_raises_the_typed_error_the_service_failed_with(sink_lab: LabHarness) -> None:
    lab = sink_lab.lab()
    with lab.lease("dut=board-1") as lease, lease["sink1"].stream("upload", fail=True) as up:
        up.write(b"x" * 1000)
        with pytest.raises(BadArguments, match="image rejected") as info:
            up.finish(timeout=10)
        assert info.value.details == {"size": 1000}
        with pytest.raises(BadArguments):  # writing after the verdict says it again
            up.write(b"more")


def test_finish_after_the_lease_ended_raises_stream_closed(sink_lab: LabHarness) -> None:
    lab = sink_lab.lab()
    lease = lab.lease("dut=board-1")
    with lease["sink1"].stream("upload") as up:
        up.write(b"partial")
        lease.release()
        with pytest.raises(StreamClosed, match="lease ended"):
            up.finish(timeout=10)
