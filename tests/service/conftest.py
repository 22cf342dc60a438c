"""Fixtures for the service tests: real Redis, real ONNX bundles, the app behind httpx's ASGI transport.

- Redis: ``redis_url`` of tests/redis_fixtures.py (``REDIS_URL`` when it answers, else an embedded
  server); every session uses its own key prefix and deletes only its own keys at the end.
- Bundles: the official small golden checkpoint exported with ``trdetr-export``'s Python API (a
  random small checkpoint when the shared data is absent), and the committed default bundle.
- ``client``: one app per test session with its lifespan running (httpx's ASGITransport does not
  run lifespans itself).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from redis_fixtures import key_namespace

from service.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from svc_helpers import SMALL_CHECKPOINT, TorchReference, run_exporter, serve  # noqa: E402


@pytest.fixture(scope="session")
def key_prefix(redis_url: str) -> Iterator[str]:
    """A key namespace of this test session only; its keys are deleted afterwards (never FLUSHALL)."""
    with key_namespace(redis_url, "trdetr-test") as prefix:
        yield prefix


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
            "bundle_dir": small_bundle,
            "redis_url": redis_url,
            "redis_key_prefix": key_prefix,
            "intra_op_threads": 1,
            "warmup_runs": 1,
            "device": "cpu",
            "redis_timeout_s": 0.3,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture(scope="session")
async def client(make_settings) -> AsyncIterator[httpx.AsyncClient]:
    """The shared app of this session (default limits, no API keys)."""
    async with serve(make_settings()) as http:
        yield http
