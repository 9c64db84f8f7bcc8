"""The dashboard in a real browser: live without reloads, filtering, and the console.

Each test saves a screenshot of the page under its tmp dir and prints the path (``-s``).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import DashboardLab, screenshot

pytestmark = pytest.mark.timeout(120)


def expect(page: Any) -> Any:
    from playwright.sync_api import expect as pw_expect

    return pw_expect(page)


def open_lab_page(page: Any, lab: DashboardLab) -> None:
    page.goto(lab.url + "/")
    expect(page.locator("#conn")).to_have_text("live")
    expect(page.locator('tr[data-device="pdu1.1"]')).to_be_visible()


def test_a_lease_taken_with_the_cli_shows_on_the_open_page_within_a_second(
    dash_lab: DashboardLab, page: Any, tmp_path: Path
) -> None:
    open_lab_page(page, dash_lab)
    row = page.locator('tr[data-device="pdu2.1"]')
    expect(row.locator("td.lease")).to_have_text("free")
    page.evaluate("window.marker = 1")  # gone after any reload
    out = dash_lab.run_cli("lease", "acquire", "dut=spare-1", "-o", "json")
    assert out.returncode == 0, out.stderr
    granted = time.monotonic()
    ref = json.loads(out.stdout)["ref"]
    expect(row.locator("td.lease")).to_contain_text(ref, timeout=1000)
    assert time.monotonic() - granted < 1.0
    expect(page.locator(f'#leases tr[data-lease="{ref}"]')).to_be_visible()
    expect(page.locator("#events li").first).to_contain_text(f"lease.{ref}.granted")
    assert page.evaluate("window.marker") == 1, "the page reloaded"
    screenshot(page, tmp_path, "lab-with-lease")
    out = dash_lab.run_cli("lease", "release", json.loads(out.stdout)["id"])
    assert out.returncode == 0, out.stderr
    expect(row.locator("td.lease")).to_have_text("free", timeout=1000)


def test_the_selector_box_filters_and_points_at_a_syntax_error(
    dash_lab: DashboardLab, page: Any, tmp_path: Path
) -> None:
    open_lab_page(page, dash_lab)
    rows = page.locator("#devices tbody tr[data-device]")
    expect(rows).to_have_count(4)
    page.fill("#selector", "dut=rpi4-01")
    expect(rows).to_have_count(2)
    expect(page.locator('tr[data-device="pdu2.1"]')).to_have_count(0)
    page.fill("#selector", "kind in (power,serial),dut notin (spare-1)")
    expect(rows).to_have_count(3)
    page.fill("#selector", "dut in (a")
    error = page.locator("#selector-error")
    expect(error).to_be_visible()
    expect(error.locator(".msg")).to_contain_text("unclosed '('")
    expect(error.locator(".caret")).to_have_text("dut in (a\n       ^")
    screenshot(page, tmp_path, "selector-error")
    page.fill("#selector", "")
    expect(rows).to_have_count(4)
    expect(error).to_be_hidden()


def test_the_event_tail_filters_by_topic_and_pauses(
    dash_lab: DashboardLab, page: Any, tmp_path: Path
) -> None:
    open_lab_page(page, dash_lab)
    page.fill("#topic", "lease.*")
    items = page.locator("#events li")
    for li in items.all():
        assert li.get_attribute("data-topic").startswith("lease."), li.get_attribute("data-topic")
    page.click("#pause")
    before = items.count()
    out = dash_lab.run_cli("lease", "acquire", "dut=spare-2", "-o", "json")
    assert out.returncode == 0, out.stderr
    expect(page.locator("#pause")).to_have_text("resume (1 new)")
    assert items.count() == before
    page.click("#pause")
    ref = json.loads(out.stdout)["ref"]
    expect(items.first).to_have_attribute("data-topic", f"lease.{ref}.granted")
    dash_lab.run_cli("lease", "release", json.loads(out.stdout)["id"])


def test_the_console_page_shows_what_the_board_printed(
    dash_lab: DashboardLab, page: Any, tmp_path: Path
) -> None:
    out = dash_lab.run_cli("lease", "acquire", "dut=rpi4-01", "-o", "json")
    assert out.returncode == 0, out.stderr
    lease = json.loads(out.stdout)
    try:
        page.goto(dash_lab.url + "/device/rpi4-01-console")
        expect(page.locator("#d-name")).to_have_text("rpi4-01-console")
        expect(page.locator("#d-console-state")).to_contain_text("connected")
        on = dash_lab.run_cli("power", "on", "pdu1.1", "--lease", lease["id"])
        assert on.returncode == 0, on.stderr
        terminal = page.locator("#d-console .xterm-rows")
        expect(terminal).to_contain_text("U-Boot", timeout=10_000)
        expect(terminal).to_contain_text("login:", timeout=10_000)
        methods = page.locator("#d-methods")
        expect(methods.locator("tr", has_text="send(")).to_contain_text("needs lease")
        expect(methods.locator("tr", has_text="log(")).to_contain_text("anyone")
        expect(page.locator("#d-summary .f-lease")).to_contain_text(lease["ref"])
        screenshot(page, tmp_path, "device-console")
        page.goto(dash_lab.url + "/device/pdu1.1")  # a power outlet: status history
        expect(page.locator("#d-history")).to_contain_text("state=on")
        expect(page.locator("#d-console-panel")).to_be_hidden()
        screenshot(page, tmp_path, "device-power")
    finally:
        dash_lab.run_cli("lease", "release", lease["id"])


def test_a_device_going_offline_turns_its_row_offline(
    dash_lab: DashboardLab, page: Any, tmp_path: Path
) -> None:
    open_lab_page(page, dash_lab)
    row = page.locator('tr[data-device="pdu2.2"]')
    expect(row).to_have_class(re.compile(r"\bonline\b"))
    pdu2 = next(p for p in dash_lab.procs if "pdu2.yaml" in " ".join(p.argv))
    pdu2.kill()  # no goodbye: the broker notices the silence (heartbeats)
    expect(row).to_have_class(re.compile(r"\boffline\b"), timeout=5000)
    expect(row.locator("td.online-cell")).to_contain_text("offline")
    expect(page.locator("#n-online")).to_have_text("2")
    screenshot(page, tmp_path, "lab-offline")
