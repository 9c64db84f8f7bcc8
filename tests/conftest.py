from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import LabHarness


@pytest.fixture
def workdir() -> Iterator[Path]:
    # ipc:// paths must stay short (about 100 bytes), so not pytest's long tmp_path.
    path = Path(tempfile.mkdtemp(prefix="lc-", dir="/tmp"))
    yield path
    if not os.environ.get("LABCTL_KEEP_TEST_DIRS"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["ipc"])
def harness(request: pytest.FixtureRequest, workdir: Path) -> Iterator[LabHarness]:
    h = LabHarness(workdir, transport=request.param)
    yield h
    h.close()


@pytest.fixture
def tcp_harness(workdir: Path) -> Iterator[LabHarness]:
    h = LabHarness(workdir, transport="tcp")
    yield h
    h.close()
