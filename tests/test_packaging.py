"""The distribution: one wheel, everything under the `labctl` namespace, the entry points."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_maps_every_folder_under_labctl(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)  # fmt: skip
    (wheel,) = tmp_path.glob("labctl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.startswith("labctl-")}
    assert top == {"labctl"}  # no generic top-level `cli`, `sdk`, `broker`
    sources = {
        p.relative_to(ROOT).as_posix()
        for d in ("sdk", "broker", "services", "cli")
        for p in (ROOT / d).rglob("*.py")
    }
    mapped = {n.replace("labctl/", "", 1) for n in names if n.endswith(".py")}
    expected = {s.replace("sdk/", "", 1) if s.startswith("sdk/") else s for s in sources}
    assert expected <= mapped, f"missing from the wheel: {sorted(expected - mapped)}"
    assert "labctl/services/simulators/example_lab.yaml" in names  # what `lab up` runs
    entry_points = (
        zipfile.ZipFile(wheel)
        .read(next(n for n in names if n.endswith("entry_points.txt")))
        .decode()
    )
    assert "labctl = labctl.cli.main:main" in entry_points
    assert "labctl = labctl.pytest_plugin" in entry_points


def test_help_imports_lazily() -> None:
    code = "import sys; from labctl.cli.main import main; print(sorted(m for m in ('zmq','trio','pydantic','msgpack') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
