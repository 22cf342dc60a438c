"""Fixtures of the ingestion tests: a key prefix per test on the shared real Redis (tests/redis_fixtures.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_fixtures import key_namespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))  # svc_helpers: serve(), npz_bytes()


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    """A key namespace of this test only; its keys are deleted afterwards (never FLUSHALL)."""
    with key_namespace(redis_url, "trdetr-ingest-test") as prefix:
        yield prefix
