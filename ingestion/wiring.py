"""Build a worker and its Redis clients from :class:`service.settings.Settings` (CLI and API alike)."""

from __future__ import annotations

import redis.asyncio as aioredis

from extraction import Extractor
from ingestion.jobs import JobStore
from ingestion.metrics import IngestMetrics
from ingestion.queue import JobQueue
from ingestion.storage import UploadStorage
from ingestion.worker import Worker, WorkerConfig
from service.cache import FeatureStore
from service.dependencies import clip_limit
from service.settings import Settings
from trdetr_common.manifest import PreprocessingContract

BLOCK_S = 2.0
"""How long a worker's read waits for a new job before it looks for stale ones again."""


def jobs_client(url: str, settings: Settings, *, blocking: bool) -> aioredis.Redis:
    """A Redis client for the queue; a worker's (``blocking``) waits out its blocking reads."""
    timeout = settings.redis_timeout_s + (BLOCK_S + 1.0 if blocking else 0.0)
    return aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=settings.redis_timeout_s,
                                   max_connections=settings.redis_max_connections)


def worker_config(settings: Settings, pre: PreprocessingContract) -> WorkerConfig:
    return WorkerConfig(
        max_tries=settings.job_max_tries, claim_idle_s=settings.job_claim_idle_s, job_timeout_s=settings.job_timeout_s,
        shutdown_grace_s=settings.graceful_shutdown_s, block_s=BLOCK_S, max_clips=clip_limit(settings, pre),
        max_unpacked_bytes=4 * settings.max_body_bytes,
    )


def make_extractor(settings: Settings) -> Extractor:
    return Extractor(settings.bundle_dir, device=settings.device, intra_op_threads=settings.intra_op_threads)


def make_worker(settings: Settings, *, client: aioredis.Redis, storage: UploadStorage, extractor: Extractor,
                store: FeatureStore, pre: PreprocessingContract, metrics: IngestMetrics) -> Worker:
    """A worker on ``client`` (from :func:`jobs_client` with ``blocking=True``)."""
    prefix = settings.redis_key_prefix
    return Worker(
        jobs=JobStore(client, prefix=prefix, ttl_s=settings.job_ttl_s),
        queue=JobQueue(client, prefix=prefix, claim_idle_s=settings.job_claim_idle_s),
        storage=storage, extractor=extractor, store=store, pre=pre, metrics=metrics,
        config=worker_config(settings, pre),
    )
