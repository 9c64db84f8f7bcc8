"""Full and read-only state disks (issue 10.5): the broker serves on, refuses lease changes
with ``storage-full``, says so, recovers by itself and loses no granted lease; a read-only
state dir is one line naming it."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from labctl import protocol
from labctl.errors import StorageFull

from ..harness import LABCTL, LabHarness, power_service, wait_until


# -- disks ----------------------------------------------------------------------------------
@pytest.fixture
def tiny_disk(workdir: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs as the broker's state dir: a real ENOSPC for SQLite, no file system
    left behind (unmounted at teardown). Needs root (mount); skipped otherwise. tmpfs rather
    than RLIMIT_FSIZE (which would kill the broker with SIGXFSZ, or need its cooperation)
    or a loop device (needs mkfs and a free loop device on a shared box)."""
    state = workdir / "state"
    state.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(state)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield state
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def _fill(path: Path) -> None:
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def test_a_full_disk_refuses_lease_changes_keeps_serving_and_recovers(
    workdir: Path, tiny_disk: Path
) -> None:
    harness = LabHarness(workdir)
    try:
        broker = harness.start_broker()
        harness.start_service(power_service())
        lab = harness.lab()
        held = lab.client.call("lease.acquire", selector="name=pdu1.1", keepalive=False)
        _fill(tiny_disk / "fill")
        with pytest.raises(StorageFull):  # the first write that finds no space
            for _ in range(20):
                other = lab.client.call("lease.acquire", selector="name=pdu1.2", keepalive=False)
                lab.client.call("lease.release", id=other["id"])
        for call in (
            lambda: lab.client.call("lease.acquire", selector="name=pdu1.2"),
            lambda: lab.client.call("lease.release", id=held["id"]),
            lambda: lab.client.call("lease.extend", id=held["id"], duration=60),
            lambda: lab.client.call("health", name="pdu1.2", health="bad", reason="x"),
        ):
            with pytest.raises(StorageFull, match=str(tiny_disk)):
                call()
        storage = lab.client.call("hello")["storage"]
        assert storage["full"] is True
        # the lease held stays valid: its holder uses the device; reads work for anyone
        on = protocol.Request.call("pdu1.1", "on", lease=held["id"])
        assert lab.client.request(on, 5.0) == "on"
        assert lab.client.call("lease.show", id=held["ref"])["devices"] == ["pdu1.1"]
        assert lab.device("pdu1.2").state() in ("on", "off")
        lab.client.call("sync", token="x")  # an event that cannot be journaled
        wait_until(lambda: "state disk full" in broker.output(), 5, "the log to say so")
        (tiny_disk / "fill").unlink()
        wait_until(lambda: not lab.client.call("hello")["storage"]["full"], 10, "recovery")
        assert lab.client.call("hello")["storage"]["unjournaled"] > 0
        again = lab.client.call("lease.acquire", selector="name=pdu1.2", keepalive=False)
        # nothing granted is lost: kill -9 and restart, both leases are there
        broker.kill(signal.SIGKILL)
        harness.start_broker()
        refs = {le["ref"] for le in harness.lab().client.call("lease.list")["leases"]}
        assert refs == {held["ref"], again["ref"]}
    finally:
        harness.close()


def test_a_read_only_state_dir_is_one_line_naming_it(workdir: Path) -> None:
    state = workdir / "ro"
    state.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(state)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        out = subprocess.run(
            [*LABCTL, "broker", "run", "--bus", f"ipc://{workdir}/bus", "--events",
             f"ipc://{workdir}/ev", "--state", str(state)],
            capture_output=True, text=True, timeout=30, env=dict(os.environ),
        )  # fmt: skip
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert str(state) in lines[0] and "writable" in lines[0]
