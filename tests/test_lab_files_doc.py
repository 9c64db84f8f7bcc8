"""docs/lab-files.md's complete example lab file: it validates, and `lab up` runs it."""

from __future__ import annotations

import re
from pathlib import Path

from .harness import LabUp

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
    with LabUp(workdir, lab_file) as up:
        expected = ["board1-console", "board1-power", "board1-storage"]
        up.wait_online("dut=board1", expected, 30, "the documented lab")
        with up.lab.lease("dut=board1") as lease:
            con = lease.serial.console()
            lease.power.on()
            con.expect("board1 login:", timeout=20)
            con.close()
