"""Prometheus metrics of one app instance (its own ``CollectorRegistry``, so tests never collide)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from ingestion.metrics import IngestMetrics

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_OVERHEAD_BUCKETS = (0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.025, 0.1, 1.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_WINDOW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """Every metric the service exports; names are documented in service/README.md."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "trdetr_http_requests_total", "HTTP requests by route template, method and status.",
            ["route", "method", "status"], registry=r,
        )
        self.latency = Histogram(
            "trdetr_http_request_duration_seconds", "HTTP request latency by route template.",
            ["route", "method"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.overhead = Histogram(
            "trdetr_http_overhead_seconds", "In-app time of a request that ran the model, minus its model runs "
            "and the wait for its body (parsing, Redis, queueing, post-processing, JSON), until the response starts.",
            buckets=_OVERHEAD_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "trdetr_inference_batch_size", "Rows per ONNX Runtime run: one row per query and window "
            "(after coalescing requests; at most max_batch_size).",
            buckets=_BATCH_BUCKETS, registry=r,
        )
        self.batch_requests = Histogram(
            "trdetr_inference_batch_requests", "Requests with rows in one ONNX Runtime run.",
            buckets=_BATCH_BUCKETS, registry=r,
        )
        self.request_windows = Histogram(
            "trdetr_inference_request_windows", "Model windows per request's video (1 unless the video is "
            "longer than the model's trained length).", buckets=_WINDOW_BUCKETS, registry=r,
        )
        self.request_runs = Histogram(
            "trdetr_inference_request_runs", "ONNX Runtime runs one request's rows were spread over.",
            buckets=_WINDOW_BUCKETS, registry=r,
        )
        self.queue_wait = Histogram(
            "trdetr_inference_queue_wait_seconds", "Time a request waited in the batching queue.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.compute = Histogram(
            "trdetr_inference_compute_seconds", "Wall time of one ONNX Runtime run (one batch).",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.queue_depth = Gauge(
            "trdetr_inference_queue_depth", "Requests waiting in the batching queue now.", registry=r
        )
        self.text_cache = Counter(
            "trdetr_text_cache_requests_total", "Query texts by where their encoding came from: hit (LRU of "
            "encoded queries), in_flight (already being encoded for another request) or miss (encoded).",
            ["result"], registry=r,
        )
        self.text_batch_size = Histogram(
            "trdetr_text_encode_batch_size", "Query texts per text-encoder run (across concurrent requests).",
            buckets=_BATCH_BUCKETS, registry=r,
        )
        self.cache = Counter(
            "trdetr_cache_requests_total", "Feature cache operations by operation and result (hit, miss, "
            "stored, deleted, error).", ["op", "result"], registry=r,
        )
        self.rejected = Counter(
            "trdetr_rejected_requests_total", "Requests refused before inference, by reason.",
            ["reason"], registry=r,
        )
        self.ingest = IngestMetrics(r)

    def render(self) -> bytes:
        """The Prometheus text exposition of this app's metrics."""
        return generate_latest(self.registry)
