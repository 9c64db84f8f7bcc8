"""The file-backed storage driver that tests of other parts and the simulated boards use."""

from __future__ import annotations

from pathlib import Path

from labctl.services.storage.mock import MockStorage

from ..drivers.harness import running, trio_test


@trio_test
async def test_a_card_without_a_size_is_64_mib(tmp_path: Path) -> None:
    async with running(MockStorage, {"path": str(tmp_path / "b1.card")}) as (drv, _):
        assert (await drv.info())["size"] == 64 << 20


@trio_test
async def test_the_side_file_never_shares_a_temporary_file_with_the_boards_power_file(
    tmp_path: Path,
) -> None:
    """A board's mock power (b1.power) and storage (b1.side) both write their state file at
    lease end, at the same moment; a shared b1.tmp made one of the resets fail."""
    (tmp_path / "b1.tmp").mkdir()  # what the power file's atomic write uses, taken
    config = {"path": str(tmp_path / "b1.card"), "size": "1MiB",
              "state_file": str(tmp_path / "b1.side")}  # fmt: skip
    async with running(MockStorage, config) as (drv, _):
        await drv.host()
        assert (tmp_path / "b1.side").read_text() == "host\n"
        await drv.reset()
        assert (tmp_path / "b1.side").read_text() == "off\n"


@trio_test
async def test_a_bare_yaml_off_is_the_off_side(tmp_path: Path) -> None:
    """YAML 1.1 reads ``initial: off`` as false; the docs' example must still work."""
    async with running(MockStorage, {"path": str(tmp_path / "c"), "initial": False}) as (drv, _):
        assert await drv.state() == "off"
