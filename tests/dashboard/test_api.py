"""The dashboard's JSON under /api/ and /metrics: what other tools read without the SDK."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import pytest

from labctl.errors import LabError

from .conftest import DashboardLab


def test_devices_take_a_selector_and_point_at_a_bad_one(dash_lab: DashboardLab) -> None:
    every = dash_lab.get("/api/devices")
    assert {d["name"] for d in every} >= {"pdu1.1", "rpi4-01-console", "pdu2.1", "pdu2.2"}
    one = dash_lab.get("/api/devices?selector=dut%3Drpi4-01,kind%3Dserial")
    assert [d["name"] for d in one] == ["rpi4-01-console"]
    dev = one[0]
    assert dev["online"] is True and dev["online_since"] > 0 and dev["health"] == "good"
    with pytest.raises(urllib.error.HTTPError) as err:
        dash_lab.get("/api/devices?selector=dut%20in%20(a")
    assert err.value.code == 400
    body = json.loads(err.value.read())
    assert body["column"] == 8 and "unclosed" in body["error"] and body["selector"] == "dut in (a"


def test_one_device_has_its_interface_and_history(dash_lab: DashboardLab) -> None:
    dev = dash_lab.get("/api/devices/pdu1.1")
    assert dev["interface"]["methods"]["on"]["mutating"] is True
    assert dev["interface"]["methods"]["state"]["mutating"] is False
    assert dev["status_history"] and dev["status_history"][-1]["status"]["state"] in ("on", "off")
    assert any(e["topic"] == "device.pdu1.1.online" for e in dev["events"])
    with pytest.raises(urllib.error.HTTPError) as err:
        dash_lab.get("/api/devices/nope")
    assert err.value.code == 404


def test_leases_queue_and_events_since(dash_lab: DashboardLab) -> None:
    out = dash_lab.run_cli("lease", "acquire", "dut=spare-1", "-o", "json")
    assert out.returncode == 0, out.stderr
    lease = json.loads(out.stdout)
    try:
        listing = dash_lab.get("/api/leases")
        (row,) = [x for x in listing["leases"] if x["ref"] == lease["ref"]]
        assert row["devices"] == ["pdu2.1"] and "id" not in row  # the id is the holder's
        assert listing["queue"] == []
        events = dash_lab.get("/api/events?since=1m&topic=lease.*")
        assert f"lease.{lease['ref']}.granted" in [e["topic"] for e in events]
        last = events[-1]["seq"]
        assert dash_lab.get(f"/api/events?since=1m&after={last}&topic=lease.*") == []
    finally:
        dash_lab.run_cli("lease", "release", lease["id"])


def test_metrics_are_prometheus_text(dash_lab: DashboardLab) -> None:
    assert dash_lab.run_cli("power", "state", "pdu1.1").returncode == 0
    out = dash_lab.run_cli("lease", "acquire", "dut=spare-2", "-o", "json")
    dash_lab.run_cli("lease", "release", json.loads(out.stdout)["id"])
    with urllib.request.urlopen(dash_lab.url + "/metrics", timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['labctl_devices{kind="power",online="true",health="good"}'] >= 3
    assert samples['labctl_rpc_total{method="state",outcome="ok"}'] >= 1
    buckets = [
        k for k in samples if k.startswith('labctl_rpc_duration_seconds_bucket{method="state"')
    ]
    assert buckets and samples['labctl_rpc_duration_seconds_bucket{method="state",le="+Inf"}'] >= 1
    assert samples["labctl_lease_acquisitions_total"] >= 1
    assert samples['labctl_lease_releases_total{reason="released"}'] >= 1
    assert samples["labctl_events_published_total"] > 0
    assert samples["labctl_broker_resident_memory_bytes"] > 10e6
    assert "labctl_lease_queue_oldest_wait_seconds" in samples
    assert re.search(r"^# TYPE labctl_rpc_duration_seconds histogram$", text, re.M)


def test_refused_rpcs_are_counted_by_error_code(dash_lab: DashboardLab) -> None:
    with pytest.raises(LabError):
        dash_lab.lab().device("pdu1.1").on()  # no lease: the broker refuses it
    with urllib.request.urlopen(dash_lab.url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    assert re.search(r'^labctl_rpc_total\{method="on",outcome="[a-z-]+"\} [1-9]', text, re.M)


def _raw_http(dash_lab: DashboardLab, request: str) -> str:
    """The status line the dashboard answers a hand-written request with."""
    import socket

    host, port = dash_lab.dashboard.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request.replace("\n", "\r\n").encode())
        return sock.recv(4096).decode("latin-1").split("\r\n", 1)[0]


def _websocket(path: str, host: str, origin: str | None) -> str:
    return (f"GET {path} HTTP/1.1\nHost: {host}\nUpgrade: websocket\nConnection: Upgrade\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\nSec-WebSocket-Version: 13\n"
            + (f"Origin: {origin}\n" if origin else "") + "\n")  # fmt: skip


def test_other_sites_are_turned_away_rebound_names_and_foreign_origins(
    dash_lab: DashboardLab,
) -> None:
    own = dash_lab.dashboard
    port = own.rsplit(":", 1)[1]
    get = "GET /api/leases HTTP/1.1\nHost: {}\nConnection: close\n\n"
    assert _raw_http(dash_lab, get.format(own)) == "HTTP/1.1 200 "
    assert _raw_http(dash_lab, get.format(f"localhost:{port}")) == "HTTP/1.1 200 "
    # a hostile name rebound to 127.0.0.1 (DNS rebinding): not this loopback dashboard's
    assert _raw_http(dash_lab, get.format(f"evil.example:{port}")) == "HTTP/1.1 403 "
    for path in ("/ws", "/ws/console/pdu1.1"):
        assert _raw_http(dash_lab, _websocket(path, own, f"http://{own}")).startswith(
            "HTTP/1.1 101"
        )
        assert _raw_http(dash_lab, _websocket(path, own, None)).startswith("HTTP/1.1 101")
        refused = _raw_http(dash_lab, _websocket(path, own, "http://evil.example"))
        assert refused.startswith("HTTP/1.1 403"), refused
