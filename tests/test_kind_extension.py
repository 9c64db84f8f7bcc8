"""A kind's CLI group and SDK proxy come from its own package (``CLI``/``CLIENT``)."""

from __future__ import annotations

import subprocess
import sys

from labctl.can import CanDevice
from labctl.kinds import cli_targets, client_target
from labctl.lab import Device, device_class
from labctl.storage import StorageDevice


def test_device_class_is_the_proxy_the_kind_declares() -> None:
    assert device_class("storage") is StorageDevice
    assert device_class("can") is CanDevice
    assert device_class("power") is Device  # no CLIENT: the generic proxy
    assert device_class("no-such-kind") is Device
    assert device_class("os.path") is Device  # a kind off the wire is never an import path
    assert device_class(None) is Device


def test_reading_the_declarations_imports_no_driver_runtime_or_library() -> None:
    code = (
        "import sys, labctl.kinds as k; k.cli_targets(); k.client_target('storage');"
        "bad = [m for m in ('trio', 'zmq', 'pydantic', 'labctl.services.catalog',"
        " 'labctl.services.runtime', 'labctl.storage') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_kind_cli_groups_are_registered_from_the_catalog() -> None:
    assert cli_targets()["storage"] == "labctl.cli.storage_cmds:storage"
    assert client_target("can") == "labctl.can:CanDevice"
    out = subprocess.run(
        [sys.executable, "-m", "labctl.cli", "--help"], capture_output=True, text=True, check=True
    )
    listed = {
        line.split()[0] for line in out.stdout.split("Commands:")[1].splitlines() if line.strip()
    }
    assert {"storage", "can", "power", "serial"} <= listed
