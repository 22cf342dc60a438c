"""Start and stop the API's side of ingestion (upload store, job queue, the in-process worker)."""

from __future__ import annotations

import asyncio
import logging

from ingestion.jobs import JobStore
from ingestion.queue import JobQueue
from ingestion.storage import storage_from_settings
from ingestion.wiring import jobs_client, make_extractor, make_worker
from service.dependencies import Runtime
from service.ingest import Ingest, InProcessWorker

log = logging.getLogger(__name__)


async def start_ingest(runtime: Runtime, cache_url: str) -> None:
    """Build ``runtime.ingest``; start the in-process worker when configured and the bundle can extract."""
    settings, bundle, store = runtime.settings, runtime.bundle, runtime.store
    assert bundle is not None and store is not None
    try:
        storage = await asyncio.to_thread(storage_from_settings, settings)
    except (OSError, ValueError, RuntimeError) as exc:  # searches still work; uploads get a 503 saying why
        log.error("video ingestion is unavailable: the upload store cannot be used: %s", exc)
        storage = None
        unavailable = f"the upload store cannot be used ({exc}); fix TRDETR_INGEST_STORAGE / TRDETR_INGEST_DIR"
    else:
        unavailable = None
    url = settings.jobs_redis_url or cache_url
    client = store.client if settings.jobs_redis_url is None else jobs_client(url, settings, blocking=False)
    missing = bundle.manifest.groups_without_encoder()  # uploads then get a 409 naming them
    extractor = None
    if settings.inprocess_worker and not missing and storage is not None:
        extractor = await asyncio.to_thread(make_extractor, settings)
    prefix = settings.redis_key_prefix
    ingest = Ingest(settings=settings, jobs=JobStore(client, prefix=prefix, ttl_s=settings.job_ttl_s),
                    queue=JobQueue(client, prefix=prefix, claim_idle_s=settings.job_claim_idle_s),
                    storage=storage, missing_groups=missing, clip_length_s=bundle.pre.clip_length_s)
    ingest.owns_client = client is not store.client
    ingest.unavailable = unavailable
    runtime.ingest = ingest
    if extractor is not None and not missing and storage is not None:
        worker_client = jobs_client(url, settings, blocking=True)
        worker = make_worker(settings, client=worker_client, storage=storage, extractor=extractor, store=store,
                             pre=bundle.pre, metrics=runtime.metrics.ingest)
        ingest.worker = InProcessWorker(worker, worker_client)
        ingest.worker.start()
    elif settings.inprocess_worker and missing:
        log.warning("no in-process ingestion worker: the bundle has no encoder for %s", missing)


async def stop_ingest(runtime: Runtime) -> None:
    ingest = runtime.ingest
    if ingest is None:
        return
    if ingest.worker is not None:
        await ingest.worker.stop(runtime.settings.graceful_shutdown_s)
    if ingest.owns_client:
        await ingest.jobs.client.aclose()

