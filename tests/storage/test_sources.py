"""URIs the storage service fetches itself through opendal: a local HTTP server the test
starts, fs:// on the service's host, and a real S3 API (moto's server mode on loopback)
through a named operator whose credentials stay in the service config."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from labctl.errors import DriverError

from ..harness import LabHarness, free_port, wait_until
from .conftest import storage_service
from .images import MiB, bmap_xml, compress, image_bytes

SECRET = "s3cr3t-Key-do-not-print"


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=0.5).close()
        return True
    except Exception as exc:
        return getattr(exc, "code", None) is not None  # an HTTP error is an answer


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{port}/"), 10, "the HTTP server")
        yield tmp_path, f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(endpoint + "/moto-api/"), 20, "moto's S3 server")
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(5)


def test_an_http_image_with_a_bmap_beside_it_is_fetched_by_the_service(
    harness: LabHarness, http_dir: tuple[Path, str]
) -> None:
    root, url = http_dir
    image = image_bytes(16 * MiB, version="4.1")
    (root / "img.wic.gz").write_bytes(compress(image, "gz"))
    (root / "img.wic.bmap").write_text(bmap_xml(image))
    harness.start_broker()
    harness.start_service(storage_service(harness.root))
    with harness.lab().lease("name=sd1") as lease:
        events: list[dict] = []
        r = lease.storage.flash(f"{url}/img.wic.gz", verify=True, progress=events.append)
        assert r["result"] == "good" and r["bmap"] and r["compression"] == "gzip"
        assert r["sha256"] == hashlib.sha256(image).hexdigest()
        with pytest.raises(DriverError) as exc:
            lease.storage.write(
                f"http://user:pw@127.0.0.1:{url.rsplit(':', 1)[1]}/nope.img?sig=abc", switch=True
            )
    msg = exc.value.message
    assert msg.endswith("/nope.img?…: not found") and ":pw" not in msg and "sig=abc" not in msg
    assert "\n" not in msg
    card = (harness.root / "sd1.card").read_bytes()[: len(image)]
    assert hashlib.sha256(card).hexdigest() == hashlib.sha256(image).hexdigest()


def test_fs_uris_read_files_on_the_services_host(harness: LabHarness, tmp_path: Path) -> None:
    (tmp_path / "a.img.xz").write_bytes(compress(b"fs image" * 50_000, "xz"))
    harness.start_broker()
    harness.start_service(storage_service(harness.root))
    cli = harness.run_cli("storage", "write", "sd1", f"fs://{tmp_path}/a.img.xz", "--switch")
    assert cli.returncode == 0, cli.stderr
    assert "xz" in cli.stdout
    missing = harness.run_cli("storage", "write", "sd1", f"fs://{tmp_path}/missing.img", "--switch")
    assert missing.returncode != 0
    assert missing.stderr.strip() == f"error: fs://{tmp_path}/missing.img: not found"


def test_s3_through_a_named_operator_keeps_credentials_on_the_service(
    harness: LabHarness, s3: str, tmp_path: Path
) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=s3, aws_access_key_id="test",
                          aws_secret_access_key=SECRET, region_name="us-east-1")  # fmt: skip
    client.create_bucket(Bucket="images")
    image = image_bytes(16 * MiB, version="5.0")
    client.put_object(Bucket="images", Key="boards/rpi4/v5.img.zst", Body=compress(image, "zst"))
    operator = {"scheme": "s3", "bucket": "images", "endpoint": s3, "region": "us-east-1",
                "access_key_id": "test", "secret_access_key": SECRET,
                "disable_config_load": "true"}  # fmt: skip
    harness.start_broker()
    # s3:// URIs use the service's environment (here: the same moto server)
    harness.env = {**harness.env, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": SECRET,
                   "AWS_ENDPOINT_URL": s3, "AWS_REGION": "us-east-1"}  # fmt: skip
    harness.start_service(storage_service(harness.root, sources={"images": operator}))
    with harness.lab().lease("name=sd1") as lease:
        r = lease.storage.write(
            "images:boards/rpi4/v5.img.zst", switch=True, sha256=hashlib.sha256(image).hexdigest()
        )
        assert r["result"] == "good" and r["compression"] == "zstd"
        with pytest.raises(DriverError) as exc:
            lease.storage.write("images:boards/rpi4/none.img", switch=True)
        assert exc.value.message == "images:boards/rpi4/none.img: not found"
        r = lease.storage.write("s3://images/boards/rpi4/v5.img.zst", switch=True)
        assert r["sha256"] == hashlib.sha256(image).hexdigest()
        info = lease.storage.call("info")
    assert SECRET not in str(info)
    assert SECRET not in (harness.root / "sd1.log").read_text()
