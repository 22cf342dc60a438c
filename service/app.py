"""The FastAPI application factory and its lifespan (model, Redis, batcher: built once, closed once)."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.cache import FeatureStore, layout_version
from service.concurrency import WorkerPools
from service.deadline import DeadlineMiddleware
from service.dependencies import Runtime
from service.docs import install_docs
from service.embedded_redis import EmbeddedRedis
from service.errors import install_error_handlers
from service.inference.batcher import DynamicBatcher
from service.inference.bundle import ModelBundle
from service.inference.text_queries import TextQueryEncoder
from service.ingest_setup import start_ingest, stop_ingest
from service.metrics import Metrics
from service.middleware import VIDEO_UPLOAD_PATH, BodyLimitMiddleware, MetricsMiddleware
from service.quota import Quota
from service.routers import collection_search, collections, ingest, kserve, ops, search, videos
from service.settings import Settings, get_settings
from service.stage1 import Stage1Indexes, embedding_dim, video_summarizer

log = logging.getLogger(__name__)

DESCRIPTION = """Moment retrieval and highlight detection with TR-DETR on ONNX Runtime.

Store a video's per-clip features once (`PUT /v1/videos/{id}/features`), or upload the video file
and let an ingestion job extract them (`PUT /v1/videos/{id}/video`, then `GET /v1/jobs/{job_id}`), then search it with
any number of queries (`POST /v1/moments`, `POST /v1/highlights`). Every error has the shape
`{"error": {"code", "message", "details"}}`. See service/README.md for what the scores mean.
"""


def load_bundle(settings: Settings) -> ModelBundle:
    """The configured bundle on the configured device (``BundleError`` / ``ProviderError`` when it cannot be)."""
    return ModelBundle(
        settings.bundle_dir,
        precision=settings.precision,
        device=settings.device,
        intra_op_threads=settings.intra_op_threads,
        inter_op_threads=settings.inter_op_threads,
        io_binding=settings.io_binding,
        cuda_graph=settings.cuda_graph,
        max_batch_size=settings.max_batch_size,
    )


async def _start(runtime: Runtime) -> None:
    """Load the bundle (unless ``trdetr-serve`` already did), connect the feature cache, warm up, start
    the batcher; then mark ready."""
    settings = runtime.settings
    runtime.workers = WorkerPools(settings.decode_concurrency)
    if runtime.bundle is None:
        runtime.bundle = await asyncio.to_thread(load_bundle, settings)
    bundle = runtime.bundle
    url = settings.redis_url
    if url is None:
        # started from the event loop's thread: the server is told to exit when that thread does
        runtime.embedded_redis = EmbeddedRedis(settings.embedded_redis_dir)
        url = runtime.embedded_redis.start()
    runtime.store = FeatureStore.from_url(
        url,
        timeout_s=settings.redis_timeout_s,
        max_connections=settings.redis_max_connections,
        pool_timeout_s=settings.request_timeout_s,
        prefix=settings.redis_key_prefix,
        layout=layout_version(bundle.pre),
        ttl_s=settings.feature_ttl_s,
        metrics=runtime.metrics,
        model_input=bundle.video_input,
        local_videos=settings.local_cache_videos,
        quota=Quota(settings.quota_max_videos, settings.quota_max_bytes),
        local_bytes=int(settings.local_cache_mb * 1024 * 1024),
        bulk_timeout_s=settings.redis_bulk_timeout_s,
        local_trust_s=settings.local_cache_trust_ms / 1000.0,
        cluster=settings.redis_cluster and settings.redis_url is not None,
        summarize=video_summarizer(bundle.pre),
    )
    if (dim := embedding_dim(bundle.pre)) is not None and bundle.text_encoder is not None:
        runtime.stage1 = Stage1Indexes(dim)
    if not await runtime.store.ping():
        log.warning("feature cache at %s is unreachable; stored-video requests get 503 until it is back", url)
    await asyncio.to_thread(bundle.warmup, settings.warmup_runs)
    runtime.batcher = DynamicBatcher(
        bundle.run,
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_batch_wait_ms,
        max_queue_size=settings.max_queue_size,
        metrics=runtime.metrics,
    )
    await runtime.batcher.start()
    if bundle.text_encoder is not None:
        runtime.text = TextQueryEncoder(
            bundle.text_encoder,
            cache_entries=settings.text_cache_entries,
            max_batch=settings.text_max_batch_size,
            metrics=runtime.metrics,
        )
        await runtime.text.start()
    await start_ingest(runtime, url)
    # Everything loaded so far lives as long as the app: keep it out of the cyclic GC, whose full
    # collections over it took ~60-75 ms on the 2-core build machine (a pause inside some request).
    gc.freeze()
    runtime.ready = True
    log.info("ready: bundle %s on %s", settings.bundle_dir, ", ".join(bundle.providers))


async def _stop(runtime: Runtime) -> None:
    runtime.ready = False
    gc.unfreeze()  # what this app leaves behind may be collected again (tests start many apps)
    await stop_ingest(runtime)
    if runtime.batcher is not None:
        await runtime.batcher.stop()
    if runtime.text is not None:
        await runtime.text.stop()
    if runtime.store is not None:
        await runtime.store.close()
    if runtime.embedded_redis is not None:
        await asyncio.to_thread(runtime.embedded_redis.stop)
        runtime.embedded_redis = None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    runtime: Runtime = app.state.runtime
    try:
        await _start(runtime)
        yield
    finally:
        await _stop(runtime)


def create_app(settings: Settings | None = None, bundle: ModelBundle | None = None) -> FastAPI:
    """A new app with its own settings, metrics registry and (at start-up) model and Redis client.

    ``bundle``: an already loaded bundle (``trdetr-serve`` loads it before starting uvicorn, so a
    broken one is reported in one line); None: the lifespan loads ``settings.bundle_dir``.
    """
    settings = settings or get_settings()
    metrics = Metrics()
    app = FastAPI(
        title="TR-DETR moment search",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served by service.docs: offline, guarded
    )
    app.state.runtime = Runtime(settings=settings, metrics=metrics, bundle=bundle)
    install_error_handlers(app)
    app.add_middleware(
        BodyLimitMiddleware,
        max_upload_bytes=settings.max_body_bytes,
        max_json_bytes=settings.max_json_body_bytes,
        metrics=metrics,
        max_video_bytes=settings.max_video_bytes,
    )
    app.add_middleware(
        DeadlineMiddleware,
        timeout_s=settings.request_timeout_s,
        metrics=metrics,
        exempt_put=VIDEO_UPLOAD_PATH,
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    # search first: the router tries routes in order, and /v1/moments and /v1/highlights are the hot path
    for router in (
        search.router,
        videos.router,
        collections.router,
        ingest.router,
        collection_search.router,
        ops.router,
        kserve.health,
        kserve.router,
    ):
        app.include_router(router)
    install_docs(app, settings)
    return app
