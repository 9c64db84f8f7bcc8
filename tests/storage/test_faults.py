"""Faults across real processes: the broker killed (-9) in the middle of an upload."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from labctl.errors import LabError

from ..harness import LabHarness, wait_until
from .conftest import storage_service
from .images import MiB, cached_images, image_sha256


def test_broker_killed_mid_upload_fails_the_write_clearly_and_a_retry_works(
    harness: LabHarness, tmp_path: Path
) -> None:
    harness.start_broker()
    # a card that takes 64 MiB/s: the 256 MiB upload runs for seconds
    harness.start_service(storage_service(harness.root, write_rate="64MiB"))
    lab = harness.lab()
    lease = lab.lease("name=sd1")
    started = threading.Event()
    outcome: dict[str, object] = {}

    def progress(ev: dict) -> None:
        if ev.get("phase") == "write" and ev.get("bytes", 0) > 0:
            started.set()

    def upload() -> None:
        t0 = time.monotonic()
        try:
            lease.storage.write(cached_images()["raw"], switch=True, progress=progress)
            outcome["result"] = "finished?!"
        except LabError as exc:
            outcome["error"] = exc
        outcome["after"] = time.monotonic() - t0

    worker = threading.Thread(target=upload)
    worker.start()
    assert started.wait(20), "the upload never started"
    killed_at = time.monotonic()
    assert harness.broker is not None
    harness.broker.kill()  # SIGKILL
    worker.join(20)
    assert not worker.is_alive()
    err = outcome.get("error")
    assert err is not None, outcome
    assert "stopped answering" in str(err) or "closed" in str(err), str(err)
    assert time.monotonic() - killed_at < 10  # a clear error within seconds, not a hang

    harness.start_broker()  # same bus, same state directory
    harness.wait_online(["sd1"])
    lab2 = harness.lab()

    def failed() -> object:
        last = lab2.device("sd1").call("info")["last_write"]
        return last and last["result"] == "failed" and last

    last = wait_until(failed, 15, "the service to mark the write failed")
    assert "stopped before it finished" in last["error"]

    small = tmp_path / "retry.img"
    small.write_bytes(b"\x07" * (4 * MiB))
    r = lease.storage.write(small, switch=True, verify=True)  # the same lease survived
    lease.release()
    assert r["result"] == "good"
    assert image_sha256()  # (keeps the image cache warm for the other tests)


def test_a_lease_ending_mid_upload_stops_the_write_and_marks_it_failed(harness: LabHarness) -> None:
    harness.start_broker()
    harness.start_service(storage_service(harness.root, write_rate="64MiB"))
    lab = harness.lab()
    lease = lab.lease("name=sd1")
    started = threading.Event()
    outcome: dict[str, object] = {}

    def upload() -> None:
        try:
            lease.storage.write(cached_images()["raw"], switch=True,
                                progress=lambda ev: ev.get("bytes") and started.set())  # fmt: skip
        except LabError as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=upload)
    worker.start()
    assert started.wait(20)
    admin = harness.lab()
    admin.client.call("lease.release", id=lease.id, reset=True, who="test")
    worker.join(20)
    assert "error" in outcome and not worker.is_alive()

    def failed() -> object:
        last = admin.device("sd1").call("info")["last_write"]
        return last and last["result"] == "failed" and last

    last = wait_until(failed, 15, "the write to be marked failed")
    assert "upload ended after" in last["error"] or "stopped before it finished" in last["error"]
    assert admin.device("sd1").call("state") == "off"  # reset after the lease
