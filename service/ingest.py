"""The API side of video ingestion: accept an upload as a queued job, read jobs back.

An upload is checked in this order, cheapest first, and every refusal is a 4xx that says what to
fix: the bundle can extract features (409), the content type is a video's (415), this process is not
already receiving ``TRDETR_MAX_CONCURRENT_UPLOADS`` uploads and the queue has room (429), the body
fits ``TRDETR_MAX_VIDEO_BYTES`` (413) and arrives fast enough (408), it is a video with a decodable
video stream no longer than the duration limit (422, from a container probe in a worker thread).
Only then is the file committed to the upload store, the job record written and the job queued.
Nothing here touches the video already stored under the id: only a successful job replaces it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from fastapi import Request
from redis.exceptions import RedisError

from extraction import ExtractionError, VideoProbe, probe_video
from ingestion.jobs import JobRecord, JobStore
from ingestion.metrics import IngestMetrics
from ingestion.queue import JobQueue
from ingestion.storage import UploadStorage
from service.body_to_file import body_to_file
from service.errors import InvalidInput, ServiceError
from service.settings import Settings

log = logging.getLogger(__name__)

MAX_VIDEO_PIXELS = 8192 * 4320
"""Largest frame accepted (8K): a few kilobytes of container can declare frames whose decoding alone
would take gigabytes of memory per frame."""
VIDEO_TYPES = ("video/mp4", "video/webm", "video/quicktime", "video/x-matroska", "application/octet-stream")

T = TypeVar("T")


class QueueUnavailable(ServiceError):
    """503: the job queue's Redis cannot be reached."""

    def __init__(self, reason: str) -> None:
        super().__init__(503, "queue_unavailable", "The job queue (Redis) is unreachable, so videos cannot be "
                         "queued or jobs read right now. Retry later.", {"reason": reason},
                         headers={"Retry-After": "2"})


async def redis_call(call: Awaitable[T]) -> T:
    """Await one job-store or queue call; Redis failures become 503 ``queue_unavailable``."""
    try:
        return await call
    except (RedisError, OSError) as exc:
        log.warning("job queue call failed: %s", exc)
        raise QueueUnavailable(f"{type(exc).__name__}: {exc}") from exc


class Ingest:
    """Upload store, job records and queue, as the API uses them."""

    def __init__(self, *, settings: Settings, jobs: JobStore, queue: JobQueue, storage: UploadStorage | None,
                 missing_groups: list[str], clip_length_s: float) -> None:
        self.settings = settings
        self.jobs, self.queue, self.storage = jobs, queue, storage
        self.missing_groups = missing_groups
        self.clip_length_s = clip_length_s
        self.active_uploads = 0
        self.worker: InProcessWorker | None = None
        self.owns_client = False
        self.unavailable: str | None = None
        """Why uploads cannot be accepted (the upload store failed at start-up); None when they can."""

    async def accept(self, request: Request, video_id: str, tenant: str, max_clips: int,
                     collections: list[str] | None = None) -> JobRecord:
        """Receive, check and queue one uploaded video file; returns the queued job (its video goes into
        ``collections`` once stored)."""
        if self.unavailable is not None or self.storage is None:
            raise ServiceError(503, "ingestion_unavailable", f"Video uploads are off on this server: "
                               f"{self.unavailable}.", headers={"Retry-After": "60"})
        self._check_can_extract()
        _check_video_type(request.headers.get("content-type"))
        if self.active_uploads >= self.settings.max_concurrent_uploads:
            raise ServiceError(429, "too_many_uploads", f"This server is receiving {self.active_uploads} video "
                               "uploads already (TRDETR_MAX_CONCURRENT_UPLOADS); retry in a moment.",
                               headers={"Retry-After": "5"})
        self.active_uploads += 1
        try:
            await self._check_queue_room()
            return await self._receive_and_queue(request, video_id, tenant, max_clips, collections or [])
        finally:
            self.active_uploads -= 1

    def _check_can_extract(self) -> None:
        if self.missing_groups:
            raise ServiceError(
                409, "encoder_missing",
                f"This model bundle has no encoder for the feature group(s) {self.missing_groups}, so it "
                "cannot extract features from a video file. Upload features instead (PUT "
                "/v1/videos/{video_id}/features), or serve a bundle exported with its encoders (--pann for audio).",
                {"missing_groups": self.missing_groups})

    async def _check_queue_room(self) -> None:
        depth = await redis_call(self.queue.depth())
        if depth.waiting + depth.running >= self.settings.max_queued_jobs:
            raise ServiceError(429, "ingest_queue_full", f"{depth.waiting + depth.running} videos are waiting or "
                               f"being processed (TRDETR_MAX_QUEUED_JOBS = {self.settings.max_queued_jobs}); retry "
                               "later.", asdict(depth), headers={"Retry-After": "30"})

    async def _receive_and_queue(self, request: Request, video_id: str, tenant: str, max_clips: int,
                                 collections: list[str]) -> JobRecord:
        assert self.storage is not None
        job_id = uuid.uuid4().hex
        spool = self.storage.spool_path(job_id)
        settings = self.settings
        try:
            size = await body_to_file(request, spool, idle_timeout_s=settings.upload_idle_timeout_s,
                                      min_bytes_per_s=settings.upload_min_bytes_per_s)
            if size == 0:
                raise InvalidInput("The body is empty; send the video file's bytes.", code="empty_video")
            probe = await self._probe(spool, max_clips)
            await asyncio.to_thread(self.storage.commit, job_id, spool)
        finally:
            await asyncio.to_thread(spool.unlink, missing_ok=True)
        source = {"duration_s": probe.duration_s, "width": probe.width, "height": probe.height, "codec": probe.codec,
                  "avg_fps": probe.avg_fps, "rotation_deg": probe.rotation_deg, "has_audio": probe.has_audio,
                  "container": probe.container, "bytes": size, "content_type": request.headers.get("content-type")}
        try:
            job = await redis_call(self.jobs.create(job_id, video_id, tenant, source, collections))
            await redis_call(self.queue.ensure_group())
            await redis_call(self.queue.enqueue(job_id))
        except BaseException:
            await asyncio.to_thread(self.storage.delete, job_id)
            await _quietly(self.jobs.discard(job_id))
            raise
        log.info("job %s queued: video %s, %d bytes, %.1f s", job_id, video_id, size, probe.duration_s or 0)
        return job

    async def _probe(self, path: Path, max_clips: int) -> VideoProbe:
        """The container probe (in a worker thread); 422 for what can be told from it."""
        try:
            probe = await asyncio.to_thread(probe_video, path)
        except ExtractionError as exc:
            status = 409 if exc.code == "encoder_missing" else 422
            raise ServiceError(status, exc.code, exc.message, exc.details or None) from None
        limit_s = max_clips * self.clip_length_s
        if probe.duration_s <= 0:
            raise InvalidInput("The video has no frames (zero length); send a video that plays.", code="empty_video")
        if probe.width and probe.height and probe.width * probe.height > MAX_VIDEO_PIXELS:
            raise InvalidInput(
                f"The video's frames are {probe.width}x{probe.height}; at most {MAX_VIDEO_PIXELS} pixels (8K) are "
                "accepted. Scale the video down (the encoders see 224x224 anyway).",
                {"width": probe.width, "height": probe.height, "max_pixels": MAX_VIDEO_PIXELS}, code="video_too_large")
        if probe.duration_s > limit_s:
            raise InvalidInput(
                f"The video is {probe.duration_s:.1f} s long; at most {limit_s:g} s ({max_clips} clips of "
                f"{self.clip_length_s:g} s) are accepted. Cut the video into shorter parts.",
                {"duration_s": probe.duration_s, "max_duration_s": limit_s, "max_clips": max_clips},
                code="video_too_long")
        return probe

    async def refresh_depth(self, metrics: IngestMetrics) -> None:
        """Set the queue-depth gauges from Redis (before a /metrics scrape); left as they were if unreachable."""
        try:
            depth = await asyncio.wait_for(self.queue.depth(), timeout=self.settings.redis_timeout_s)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("queue depth unavailable: %s", exc)
            return
        metrics.queue_depth.set(depth.waiting + depth.running)
        metrics.queue_running.set(depth.running)

    async def job_for(self, job_id: str, tenant: str) -> JobRecord:
        """The job, if it exists and belongs to ``tenant`` (another key's job is a 404, as if absent)."""
        job = await redis_call(self.jobs.get(job_id))
        if job is None or job.tenant != tenant:
            raise ServiceError(404, "not_found", f"No job '{job_id}' (never created, or its status expired "
                               f"TRDETR_JOB_TTL_S after it ended).", {"job_id": job_id})
        return job


def _check_video_type(content_type: str | None) -> None:
    mime = (content_type or "").split(";")[0].strip().lower()
    if mime not in VIDEO_TYPES:
        raise ServiceError(415, "unsupported_media_type",
                           f"Content-Type '{mime or '<none>'}' is not a video file's. Send the file's raw bytes "
                           f"with one of {', '.join(VIDEO_TYPES)}.", {"accepted": list(VIDEO_TYPES)})


async def _quietly(call: Awaitable[Any]) -> None:
    try:
        await call
    except (RedisError, OSError) as exc:
        log.warning("cleanup after a failed upload: %s", exc)


class InProcessWorker:
    """One ingestion worker inside the API process (``TRDETR_INPROCESS_WORKER``), run as an asyncio task."""

    def __init__(self, worker: Any, client: Any) -> None:
        self.worker = worker
        self.client = client
        self.stop_event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.worker.run(self.stop_event), name="ingestion-worker")

    async def stop(self, grace_s: float) -> None:
        """Let the job in progress finish or be given back (the worker's shutdown grace), then close."""
        self.stop_event.set()
        if self.task is not None:
            try:
                await asyncio.wait_for(self.task, timeout=grace_s + 30)
            except TimeoutError:
                log.warning("the in-process ingestion worker did not stop in time; its job will be taken over")
            except Exception:
                log.exception("the in-process ingestion worker failed")
        await self.client.aclose()
