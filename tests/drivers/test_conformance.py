"""Every registered driver has its kind's shape: the interface's exports and streams, a
config that rejects unknown keys; every kind has a mock. Also: how the catalog is found."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from labctl.errors import ConfigError
from labctl.services import catalog
from labctl.services.catalog import Kind

from .conformance import driver_problems, kind_problems

KINDS = catalog.kinds()
DRIVERS = [(k, d) for k, kind in sorted(KINDS.items()) for d in sorted(kind.drivers)]


def test_the_catalog_is_found_without_problems() -> None:
    assert {"power", "serial"} <= KINDS.keys()
    assert catalog.catalog().problems == []


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_has_a_mock(kind: str) -> None:
    assert kind_problems(KINDS[kind]) == []


@pytest.mark.parametrize(("kind", "driver"), DRIVERS, ids=[f"{k}.{d}" for k, d in DRIVERS])
def test_every_driver_has_its_kinds_shape(kind: str, driver: str) -> None:
    cls = catalog.load_driver(kind, driver)
    assert driver_problems(kind, catalog.load_interface(kind), cls) == []


def test_the_checks_catch_a_stray_export_a_missing_mock_and_a_lax_config() -> None:
    from pydantic import ConfigDict

    from labctl.services.driver import DriverConfig
    from labctl.services.export import export
    from labctl.services.power.interface import PowerDriver
    from labctl.services.power.mock import MockPower

    class Extra(MockPower):
        @export(mutating=True)
        async def toggle(self) -> str:
            return "toggled"

        @export  # the interface says mutating
        async def on(self) -> str:
            return "on"

    class LaxConfig(DriverConfig):
        model_config = ConfigDict(extra="ignore")

    class Lax(MockPower):
        Config = LaxConfig

    problems = driver_problems("power", PowerDriver, Extra)
    assert any("exports 'toggle'" in p for p in problems), problems
    assert any("'on' is" in p and "'mutating': False" in p for p in problems), problems
    assert any("unknown key" in p for p in driver_problems("power", PowerDriver, Lax))
    assert driver_problems("serial", PowerDriver, MockPower)  # wrong kind, wrong interface
    lacking = Kind("gpio", "x:Y", {"real": "x:Z"}, {})
    assert kind_problems(lacking) == ["kind 'gpio' has no 'mock' driver"]


def test_unknown_kinds_and_drivers_are_clear_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown kind 'warp'; known kinds: .*power"):
        catalog.load_driver("warp", "mock")
    with pytest.raises(ConfigError, match=r"unknown power driver 'x'; known: mock, "):
        catalog.load_driver("power", "x")


def test_finding_the_catalog_imports_no_driver_library() -> None:
    code = (
        "import sys; from labctl.services import catalog; catalog.catalog(); "
        "print(sorted(m for m in ('pysnmp', 'paho', 'usb', 'serial', 'can', 'opendal', 'labctl.services.power.mock')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _dist(root: Path, name: str, entry_points: str, modules: dict[str, str]) -> None:
    """A minimal installed distribution: a module and its dist-info with entry points."""
    info = root / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))


def _run(code: str, path: Path) -> str:
    env = {"PYTHONPATH": str(path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_third_party_driver_plugs_in_through_the_entry_point_group(tmp_path: Path) -> None:
    _dist(
        tmp_path,
        "labctl_fancy",
        """\
        [labctl.drivers]
        power.fancy = labctl_fancy:FancyPower
        power.mock = labctl_fancy:FancyPower
        teleport.beam = labctl_fancy:FancyPower
        """,
        {
            "labctl_fancy": """\
            from labctl.services.power.mock import MockPower

            class FancyPower(MockPower):
                '''A third-party power driver.'''
            """
        },
    )
    out = _run(
        """\
        from labctl.services import catalog
        print(catalog.load_driver("power", "fancy").__qualname__)
        print(catalog.kinds()["power"].origins["fancy"])
        print(catalog.load_driver("power", "mock").__module__)
        for problem in catalog.catalog().problems:
            print(problem)
        """,
        tmp_path,
    )
    lines = out.splitlines()
    assert lines[0] == "FancyPower"
    assert lines[1] == "entry point 'power.fancy' of labctl_fancy"
    assert lines[2] == "labctl.services.power.mock"  # a built-in is never replaced
    assert "power driver 'mock' exists already; ignored" in out
    assert "labctl has no kind 'teleport'" in out


def test_a_new_kind_package_is_found_without_editing_the_catalog(tmp_path: Path) -> None:
    gpio = tmp_path / "gpio"
    gpio.mkdir()
    (gpio / "__init__.py").write_text(
        'KIND = "gpio"\n'
        'INTERFACE = "labctl.services.power.interface:PowerDriver"\n'
        'DRIVERS = {"mock": "labctl.services.power.mock:MockPower"}\n'
    )
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "__init__.py").write_text(
        "KIND = 'broken'\nraise ImportError('half-written')\n"
    )
    out = _run(
        f"""\
        import labctl.services
        labctl.services.__path__.append({str(tmp_path)!r})
        from labctl.services import catalog
        print(sorted(catalog.kinds()))
        print(catalog.load_driver("gpio", "mock").__qualname__)
        print(catalog.catalog().problems)
        """,
        tmp_path,
    )
    lines = out.splitlines()
    assert "'gpio'" in lines[0] and "'power'" in lines[0]
    assert lines[1] == "MockPower"
    assert "labctl.services.broken does not import: ImportError: half-written" in lines[2]
