"""Fixtures of every test directory: the anyio backend and the shared real Redis (``redis_fixtures``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from redis_fixtures import redis_url  # noqa: E402, F401  (a fixture: pytest finds it by name here)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"
