"""Prometheus metrics of ingestion: queue depth, jobs by outcome, job duration, extraction speed.

Registered on the API's registry (its ``/metrics`` also shows the in-process worker and the queue)
or on a ``trdetr-worker`` process's own registry (served on ``TRDETR_WORKER_METRICS_PORT``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400)
_SPEED_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 10)

OUTCOMES = ("succeeded", "failed", "retried", "released", "lost")


class IngestMetrics:
    """Every ingestion metric; names are documented in service/README.md."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.queue_depth = Gauge(
            "trdetr_ingest_queue_depth", "Ingestion jobs not yet ended: waiting for a worker or running (the "
            "worker autoscaler's signal: one worker per job).", registry=registry,
        )
        self.queue_running = Gauge(
            "trdetr_ingest_jobs_running", "Ingestion jobs held by a worker now.", registry=registry
        )
        self.jobs = Counter(
            "trdetr_ingest_jobs_total", "Ingestion job tries by outcome: succeeded, failed (for good), retried "
            "(will be tried again), released (worker stopping), lost (another worker took it over).",
            ["outcome"], registry=registry,
        )
        self.duration = Histogram(
            "trdetr_ingest_job_duration_seconds", "Wall time of one ingestion try, from take-over to its end.",
            buckets=_DURATION_BUCKETS, registry=registry,
        )
        self.queue_wait = Histogram(
            "trdetr_ingest_queue_wait_seconds", "Time from upload to a worker starting the job's first try.",
            buckets=_DURATION_BUCKETS, registry=registry,
        )
        self.extraction_speed = Histogram(
            "trdetr_ingest_extraction_seconds_per_video_second",
            "Extraction wall time per second of video (below 1: faster than real time).",
            buckets=_SPEED_BUCKETS, registry=registry,
        )
