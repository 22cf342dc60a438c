"""Fixtures of the ingestion tests: a real Redis (REDIS_URL or an embedded one) with a key prefix per session."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from service.embedded_redis import EmbeddedRedis

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))  # svc_helpers: serve(), npz_bytes()


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
    url = os.environ.get("REDIS_URL")
    if url and _answers(url):
        yield url
        return
    server = EmbeddedRedis()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    """A key namespace of this test only; its keys are deleted afterwards (never FLUSHALL)."""
    prefix = f"trdetr-ingest-test-{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=500))
    if keys:
        client.delete(*keys)
    client.close()
