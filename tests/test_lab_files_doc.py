"""docs/lab-files.md's complete example lab file: it validates, and `lab up` runs it."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

from labctl.lab import Lab

from .harness import wait_until

DOC = Path(__file__).parent.parent / "docs" / "lab-files.md"


def example_lab() -> str:
    """The first YAML block after "## A complete example"."""
    section = DOC.read_text().split("## A complete example", 1)[1]
    found = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert found is not None
    return found.group(1)


def test_the_documented_example_lab_file_runs_and_boots_its_board(workdir) -> None:  # type: ignore[no-untyped-def]
    from labctl.cli.lab_up import load_lab

    lab_file = workdir / "lab.yaml"
    lab_file.write_text(example_lab())
    spec = load_lab(str(lab_file), workdir / "s" / "run")
    assert set(spec["broker"]) == {
        "bus", "events", "heartbeat", "lease_grace", "group_label", "dashboard"
    }  # fmt: skip
    bus = f"ipc://{workdir}/bus"
    log = open(workdir / "lab.log", "wb")  # noqa: SIM115
    up = subprocess.Popen(
        [sys.executable, "-m", "labctl.cli", "lab", "up", str(lab_file), "--state", str(workdir / "s"),
         "--bus", bus, "--events", f"ipc://{workdir}/ev", "--dashboard", "off"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    lab = Lab(bus, timeout=5)
    try:
        expected = ["board1-console", "board1-power", "board1-storage"]

        def online() -> list[str]:
            try:
                return sorted(d["name"] for d in lab.devices("dut=board1") if d["online"])
            except Exception:
                return []

        wait_until(lambda: online() == expected, 30, "the documented lab")
        with lab.lease("dut=board1") as lease:
            con = lease.serial.console()
            lease.power.on()
            con.expect("board1 login:", timeout=20)
            con.close()
        up.send_signal(signal.SIGINT)
        assert up.wait(20) == 0
    finally:
        lab.close()
        if up.poll() is None:
            up.kill()
            up.wait()
        log.close()
