"""What a new user hit with the labctl command (issue 9): addresses, listings, lease output."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest
import trio
import yaml

from labctl.aio import AsyncLab
from labctl.errors import LabError
from labctl.lab import Lab

from .harness import LabHarness, power_service, wait_until

ACCEPTED = "write tcp://HOST:PORT, HOST:PORT (tcp), ipc://PATH or inproc://NAME"


@pytest.fixture
def lab1(harness: LabHarness) -> LabHarness:
    harness.start_broker()
    harness.start_service(power_service("pdu1", outlets=2))
    return harness


def test_host_port_without_scheme_is_tcp_for_the_cli_and_the_sdk(tcp_harness: LabHarness) -> None:
    tcp_harness.start_broker()
    host_port = tcp_harness.bus.removeprefix("tcp://")
    port = host_port.rpartition(":")[2]
    for address in (host_port, f"localhost:{port}"):
        r = tcp_harness.run_cli("devices", "-o", "json", env={"LABCTL_BROKER": address})
        assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr
        r = tcp_harness.run_cli("devices", "--broker", address, "-o", "json")
        assert r.returncode == 0, r.stderr
        with Lab(address, timeout=5) as lab:
            assert lab.address == f"tcp://{address}" and lab.devices() == []

    async def aio() -> list[object]:
        async with AsyncLab(host_port, timeout=5) as lab:
            return await lab.devices()

    assert trio.run(aio) == []


def test_an_address_of_no_accepted_form_is_one_line_naming_the_forms(workdir) -> None:  # type: ignore[no-untyped-def]
    h = LabHarness(workdir)
    for bad in ("localhost", "http://lab:5550", "lab:port", "tcp://lab"):
        r = h.run_cli("devices", env={"LABCTL_BROKER": bad})
        assert r.returncode == 2
        assert r.stderr == f"error: invalid broker address {bad!r}: {ACCEPTED}\n"
        with pytest.raises(LabError, match=f"invalid broker address {bad!r}: write tcp://"):
            Lab(bad)
        with pytest.raises(LabError, match="write tcp://HOST:PORT"):
            AsyncLab(bad)


def test_events_honour_every_output_format(lab1: LabHarness) -> None:
    assert lab1.run_cli("power", "on", "pdu1.2").returncode == 0
    args = ("events", "--since", "1h", "--topic", "device.pdu1.2.*")
    listed = json.loads(lab1.run_cli(*args, "-o", "json").stdout)  # one array, like every listing
    assert isinstance(listed, list) and listed and {"seq", "ts", "topic", "body"} <= set(listed[0])
    as_yaml = yaml.safe_load(lab1.run_cli(*args, "-o", "yaml").stdout)
    assert as_yaml[: len(listed)] == json.loads(json.dumps(listed, default=str))
    # (the service may publish more events meanwhile: the earlier ones come first)
    names = lab1.run_cli(*args, "-o", "name").stdout.split()
    assert names[: len(listed)] == [e["topic"] for e in listed]
    # ISO times work as --since too: from a minute ago, the same events; from later, none
    start = datetime.fromtimestamp(listed[0]["ts"] - 60).isoformat(timespec="seconds")
    since_start = json.loads(lab1.run_cli(*args, "--since", start, "-o", "json").stdout)
    assert since_start[: len(listed)] == listed
    future = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    assert json.loads(lab1.run_cli(*args, "--since", future, "-o", "json").stdout) == []
    bad = lab1.run_cli(*args, "--since", "yesterday")
    assert bad.returncode == 2 and bad.stderr.startswith("error: invalid --since 'yesterday'")


def test_lease_output_name_is_the_ref_everywhere_and_id_is_the_credential(lab1: LabHarness) -> None:
    acquired = json.loads(lab1.run_cli("lease", "acquire", "dut=rpi4-01", "-o", "json").stdout)
    lease_id, ref = acquired["id"], acquired["ref"]
    assert lab1.run_cli("lease", "list", "-o", "name").stdout.split() == [ref]
    assert lab1.run_cli("lease", "show", lease_id, "-o", "name").stdout.strip() == ref
    second = lab1.run_cli("lease", "acquire", "dut=rpi4-02", "-o", "name")
    assert second.returncode == 0 and second.stdout.strip() in lab1.run_cli("lease", "list").stdout
    third = lab1.run_cli("lease", "release", second.stdout.strip())  # a ref releases nothing
    assert "public ref" in third.stderr
    # DURATION is an argument, as the help says (--duration still works)
    ext = lab1.run_cli("lease", "extend", lease_id, "1h", "-o", "name")
    assert ext.returncode == 0 and ext.stdout.strip() == ref, ext.stderr
    ext2 = json.loads(
        lab1.run_cli("lease", "extend", lease_id, "--duration", "1h", "-o", "json").stdout
    )
    assert ext2["end"] - ext2["begin"] == pytest.approx(30 * 60 + 7200, abs=5)
    missing = lab1.run_cli("lease", "extend", lease_id)
    assert missing.returncode == 2 and "missing DURATION" in missing.stderr
    # an end time tomorrow shows its date; today's shows only the clock time
    table = lab1.run_cli("lease", "list").stdout
    assert time.strftime("%H:%M", time.localtime(ext2["end"])) in table
    lab1.run_cli("lease", "extend", lease_id, "1d")
    end = json.loads(lab1.run_cli("lease", "show", lease_id, "-o", "json").stdout)["end"]
    day = time.strftime("%Y-%m-%d", time.localtime(end))
    assert (
        f"{day} {time.strftime('%H:%M:%S', time.localtime(end))}"
        in lab1.run_cli("lease", "list").stdout
    )
    id_only = lab1.run_cli("lease", "acquire", "site=nowhere,dut=x", "-o", "id")
    assert id_only.returncode == 3  # NoMatch: one line, no id printed
    assert lab1.run_cli("lease", "release", lease_id).returncode == 0


def test_devices_table_fits_the_terminal_and_wide_shows_everything(harness: LabHarness) -> None:
    harness.start_broker()
    labels = {"site": "building-7-room-12-rack-3", "owner": "firmware-team", "project": "x" * 40}
    harness.start_service(power_service("pdu1", outlets=2, labels=labels))
    with harness.lab().lease("dut=rpi4-01"):  # a long holder, too
        listed = harness.run_cli("devices", env={"COLUMNS": "80"})
        assert listed.returncode == 0, listed.stderr
        table = listed.stdout.splitlines()
        wide = harness.run_cli("devices", "-o", "wide", env={"COLUMNS": "80"}).stdout.splitlines()
    assert len(table) == 3 and all(len(line) <= 80 for line in table), table
    assert table[0].split()[:2] == ["NAME", "KIND"] and table[1].startswith("pdu1.1 ")
    assert "…" in table[1] and "x" * 40 not in table[1]
    assert len(wide) == 3 and f"project={'x' * 40}" in wide[1] and max(map(len, wide)) > 80


def test_one_shot_errors_name_the_device_not_an_internal_selector(lab1: LabHarness) -> None:
    assert (
        lab1.run_cli("device", "maintenance", "pdu1.1", "on", "--reason", "flaky").returncode == 0
    )
    r = lab1.run_cli("power", "on", "pdu1.1")
    assert r.returncode == 7, r.stderr
    assert r.stderr == (  # a device in maintenance is refused before any lease is tried
        "error: on() on 'pdu1.1': the device is in maintenance (flaky); an admin debugging it "
        "may force it with --force --reason TEXT\n"
    )


def test_exit_codes_are_one_table_in_the_docs_and_help_and_match_the_errors() -> None:
    import re
    import sys
    from pathlib import Path

    import labctl.errors

    doc = (Path(__file__).parent.parent / "docs" / "cli.md").read_text()
    rows = re.findall(r"^\| (\d+) \| ([^|]+) \|([^|]*)\|$", doc, re.M)
    assert [int(code) for code, _, _ in rows] == [0, 1, 2, 3, 4, 5, 6, 7, 130]
    for code, _, names in rows:
        for name in re.findall(r"`(\w+)`", names):
            assert getattr(labctl.errors, name).exit_code == int(code), name
    # `labctl --help` ends with the same table, and stays fast: no zmq, trio, pydantic, yaml
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "labctl.cli", "--help"],
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 0
    for code, meaning, _ in rows:
        assert re.search(rf"^ +{code} +{re.escape(meaning.strip())}$", r.stdout, re.M), meaning
    imported = {line.rpartition("|")[2].strip() for line in r.stderr.splitlines()}
    assert not imported & {"zmq", "trio", "pydantic", "yaml", "msgpack", "structlog"}


def test_readme_links_the_cli_selector_and_lab_file_docs() -> None:
    from pathlib import Path

    root = Path(__file__).parent.parent
    readme = (root / "README.md").read_text()
    for doc in ("docs/cli.md", "docs/selectors.md", "docs/lab-files.md"):
        assert f"]({doc})" in readme and (root / doc).exists(), doc


def test_broker_and_lab_up_take_host_port_too_and_refuse_other_forms(workdir) -> None:  # type: ignore[no-untyped-def]
    import socket

    h = LabHarness(workdir)
    r = h.run_cli("broker", "run", "--bus", "lab-host", "--state", str(workdir / "s"))
    assert (r.returncode, r.stderr) == (2, f"error: invalid --bus address 'lab-host': {ACCEPTED}\n")
    with socket.socket() as other:  # HOST:PORT is tcp: lab up checks it like tcp://HOST:PORT
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        r = h.run_cli("lab", "up", "--bus", f"127.0.0.1:{port}", "--events", f"ipc://{workdir}/ev",
                      "--dashboard", "off", "--state", str(workdir / "s"))  # fmt: skip
    assert r.returncode == 2
    assert r.stderr == f"error: bus address tcp://127.0.0.1:{port} is in use (another lab?)\n"


def test_a_dashboard_address_is_checked_and_a_taken_port_is_one_line(
    tcp_harness: LabHarness,
) -> None:
    import socket

    h = tcp_harness
    r = h.run_cli("broker", "run", "--dashboard", "lab-host", "--state", str(h.root / "s"))
    assert (r.returncode, r.stderr) == (
        2,
        "error: invalid --dashboard 'lab-host': write HOST:PORT, :PORT, PORT or off\n",
    )
    with socket.socket() as other:  # the port is taken: the broker serves on, and says why
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        broker = h.start_broker(extra=("--dashboard", f"127.0.0.1:{port}"))
        wait_until(lambda: "dashboard not served" in broker.output(), 10, "the dashboard error")
    assert "error='[Errno 98] Address already in use'" in broker.output()
    with Lab(h.bus, timeout=5) as lab:
        assert lab.devices() == []
