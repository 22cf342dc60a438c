"""``trdetr-worker``: one ingestion worker process (run as many as the queue needs).

Configured like ``trdetr-serve``, from the same ``TRDETR_*`` environment (bundle, Redis, upload store,
job settings); it needs a Redis server that the API reaches too (``REDIS_URL``, or
``TRDETR_JOBS_REDIS_URL`` for the queue). SIGTERM or SIGINT stops it gracefully: the job in progress
gets ``TRDETR_GRACEFUL_SHUTDOWN_S`` to finish and is otherwise given back to the queue for another
worker, without using up one of its tries. Prometheus metrics on ``TRDETR_WORKER_METRICS_PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from prometheus_client import start_http_server

from ingestion.storage import storage_from_settings
from ingestion.wiring import jobs_client, make_extractor, make_worker
from service.cache import FeatureStore, layout_version
from service.metrics import Metrics
from service.quota import Quota
from service.settings import Settings
from service.stage1 import video_summarizer
from trdetr_common.cli import HelpFormatter
from trdetr_common.manifest import Manifest

log = logging.getLogger("trdetr-worker")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trdetr-worker", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="Prometheus port (default: TRDETR_WORKER_METRICS_PORT, 9100; 0 = none)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not (settings.redis_url or settings.jobs_redis_url):
        print("trdetr-worker: set REDIS_URL (and TRDETR_JOBS_REDIS_URL if the queue has its own server) to the "
              "Redis that trdetr-serve uses; a worker cannot reach trdetr-serve's embedded Redis.", file=sys.stderr)
        return 2
    port = settings.worker_metrics_port if args.metrics_port is None else args.metrics_port
    try:
        return asyncio.run(_run(settings, port))
    except KeyboardInterrupt:
        return 0


async def _run(settings: Settings, metrics_port: int) -> int:
    pre = Manifest.load(settings.bundle_dir).preprocessing
    extractor = await asyncio.to_thread(make_extractor, settings)
    if extractor.missing_groups:
        log.error("the bundle in %s has no encoder for %s: it cannot ingest videos", settings.bundle_dir,
                  extractor.missing_groups)
        return 2
    metrics = Metrics()
    server = None
    if metrics_port:
        server, _thread = start_http_server(metrics_port, addr=settings.host, registry=metrics.registry)
    cache_url = settings.redis_url or settings.jobs_redis_url
    assert cache_url is not None
    # the API's feature store, with the same per-key quotas
    store = FeatureStore.from_url(
        cache_url, timeout_s=settings.redis_timeout_s, max_connections=settings.redis_max_connections,
        pool_timeout_s=settings.request_timeout_s, prefix=settings.redis_key_prefix, layout=layout_version(pre),
        ttl_s=settings.feature_ttl_s, metrics=metrics, model_input=_write_only, local_videos=0,
        quota=Quota(settings.quota_max_videos, settings.quota_max_bytes), summarize=video_summarizer(pre),
    )
    client = jobs_client(settings.jobs_redis_url or cache_url, settings, blocking=True)
    storage = await asyncio.to_thread(storage_from_settings, settings)
    worker = make_worker(settings, client=client, storage=storage, extractor=extractor, store=store, pre=pre,
                         metrics=metrics.ingest)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await worker.run(stop)
    finally:
        await client.aclose()
        await store.close()
        if server is not None:
            server.shutdown()
    return 0


def _write_only(features):  # noqa: ANN001, ANN202 - never called: a worker only stores features
    raise RuntimeError("ingestion workers store features; they never read them as model inputs")


if __name__ == "__main__":
    sys.exit(main())
