"""Faults across real processes: the broker killed (-9) in the middle of an upload."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from labctl import Lab
from labctl.errors import LabError

from ..harness import LabHarness, wait_until
from .conftest import storage_service
from .images import MiB, cached_images


class SlowUpload:
    """A 256 MiB upload into a card that takes 64 MiB/s (so it runs for seconds), in a
    thread, on a lease of ``sd1``; ``started`` is set once the first bytes are written."""

    def __init__(self, harness: LabHarness) -> None:
        harness.start_broker()
        harness.start_service(storage_service(harness.root, write_rate="64MiB"))
        self.lease = harness.lab().lease("name=sd1")
        self.started = threading.Event()
        self.error: LabError | None = None
        self.worker = threading.Thread(target=self._upload)
        self.worker.start()
        assert self.started.wait(20), "the upload never started"

    def _progress(self, ev: dict) -> None:
        if ev.get("phase") == "write" and ev.get("bytes", 0) > 0:
            self.started.set()

    def _upload(self) -> None:
        try:
            self.lease.storage.write(cached_images()["raw"], switch=True, progress=self._progress)
        except LabError as exc:
            self.error = exc

    def stopped_with_error(self) -> LabError:
        self.worker.join(20)
        assert not self.worker.is_alive(), "the upload still runs"
        assert self.error is not None, "the upload finished although it was stopped"
        return self.error


def failed_write(lab: Lab, why: str) -> dict:
    """The card's last write once the service has marked it failed."""

    def failed() -> object:
        last = lab.device("sd1").call("info")["last_write"]
        return last and last["result"] == "failed" and last

    return wait_until(failed, 15, why)  # type: ignore[no-any-return]


def test_broker_killed_mid_upload_fails_the_write_clearly_and_a_retry_works(
    harness: LabHarness, tmp_path: Path
) -> None:
    upload = SlowUpload(harness)
    killed_at = time.monotonic()
    assert harness.broker is not None
    harness.broker.kill()  # SIGKILL
    err = upload.stopped_with_error()
    assert "stopped answering" in str(err) or "closed" in str(err), str(err)
    assert time.monotonic() - killed_at < 10  # a clear error within seconds, not a hang

    harness.start_broker()  # same bus, same state directory
    harness.wait_online(["sd1"])
    last = failed_write(harness.lab(), "the service to mark the write failed")
    assert "stopped before it finished" in last["error"]

    small = tmp_path / "retry.img"
    small.write_bytes(b"\x07" * (4 * MiB))
    r = upload.lease.storage.write(small, switch=True, verify=True)  # the same lease survived
    upload.lease.release()
    assert r["result"] == "good"


def test_a_lease_ending_mid_upload_stops_the_write_and_marks_it_failed(harness: LabHarness) -> None:
    upload = SlowUpload(harness)
    admin = harness.lab()
    admin.client.call("lease.release", id=upload.lease.id, reset=True, who="test")
    upload.stopped_with_error()
    last = failed_write(admin, "the write to be marked failed")
    assert "upload ended after" in last["error"] or "stopped before it finished" in last["error"]
    assert admin.device("sd1").call("state") == "off"  # reset after the lease
