"""The worker loop: take a job from the queue, extract the video's features, store them, end the job.

One :class:`Worker` runs one job at a time, in an asyncio task: the blocking work (reading the upload,
decoding and the ONNX encoders in :mod:`extraction`, validation) runs in worker threads, while the
loop keeps a heartbeat on the job and writes its progress. ``trdetr-worker`` runs one per process;
``trdetr-serve`` runs one inside the API process (``TRDETR_INPROCESS_WORKER``).

Per try (see :mod:`.queue` for how tries are counted and handed over):

1. the job record is taken for this try (its ``owner``); a job that already ended is only acknowledged;
2. extraction with progress; the heartbeat task renews the queue entry and aborts the try when another
   worker took the job over (``lost``), when the try ran past ``TRDETR_JOB_TIMEOUT_S`` or when the
   worker is stopping and the job did not finish within ``TRDETR_GRACEFUL_SHUTDOWN_S`` (it is given
   back, without using up a try);
3. the features go through exactly the validation, normalisation and storage of
   ``PUT /v1/videos/{id}/features`` (:func:`service.uploads.parse_video`, ``FeatureStore.put``), only if
   this try still holds the job and no later upload for the same video id superseded it;
4. the job ends ``succeeded`` or ``failed`` (the upload is deleted and the entry acknowledged), or, after
   a transient failure, goes back to ``queued`` for another try until ``TRDETR_JOB_MAX_TRIES``.

A failed job never touches the video already stored under its id: features are written only on success.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any

from extraction import ExtractionError, Extractor, npz_bytes
from ingestion.jobs import JobError, JobRecord, JobStore
from ingestion.metrics import IngestMetrics
from ingestion.queue import Delivery, JobQueue
from ingestion.storage import UploadMissing, UploadStorage
from service.cache import FeatureStore
from service.errors import ServiceError
from service.uploads import parse_video, video_meta
from trdetr_common.manifest import PreprocessingContract

log = logging.getLogger(__name__)

EXTRACTION_SHARE = 0.95
"""Progress reached when extraction is done (validation and storage take the rest)."""
STALE_FILES_S = 2 * 24 * 3600.0
"""Scratch files older than this were left by a process that died; a starting worker deletes them."""
STALE_CONSUMERS_S = 24 * 3600.0


class TryAborted(Exception):
    """Raised in the extraction thread (from its progress callback) to stop the current try."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class WorkerConfig:
    """Timing and limits of a worker (from :class:`service.settings.Settings`)."""

    max_tries: int = 3
    claim_idle_s: float = 60.0
    job_timeout_s: float = 4 * 3600.0
    shutdown_grace_s: float = 20.0
    block_s: float = 2.0
    max_clips: int = 75
    max_unpacked_bytes: int = 128 * 1024 * 1024

    @property
    def heartbeat_s(self) -> float:
        return self.claim_idle_s / 4


class TryState:
    """What the extraction thread and the heartbeat task share about one try."""

    def __init__(self, timeout_s: float) -> None:
        self.fraction = 0.0
        self.abort_reason: str | None = None
        self.started = time.monotonic()
        self.deadline = self.started + timeout_s

    def report(self, fraction: float) -> None:
        """The extractor's progress callback (runs in its thread): record, and stop if asked to or late."""
        self.fraction = min(max(float(fraction), 0.0), 1.0)
        if time.monotonic() > self.deadline:
            self.abort("timeout")
        if self.abort_reason is not None:
            raise TryAborted(self.abort_reason)

    def abort(self, reason: str) -> None:
        if self.abort_reason is None:
            self.abort_reason = reason


def worker_name() -> str:
    """A consumer name unique to this worker: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Worker:
    """Runs ingestion jobs one at a time until :meth:`run`'s stop event is set."""

    def __init__(
        self, *, jobs: JobStore, queue: JobQueue, storage: UploadStorage, extractor: Extractor,
        store: FeatureStore, pre: PreprocessingContract, metrics: IngestMetrics, config: WorkerConfig,
        name: str | None = None,
    ) -> None:
        self.jobs, self.queue, self.storage = jobs, queue, storage
        self.extractor, self.store, self.pre = extractor, store, pre
        self.metrics, self.config = metrics, config
        self.name = name or worker_name()
        self._stopping: asyncio.Event | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Take and run jobs until ``stop`` is set; a job in progress then gets the shutdown grace."""
        self._stopping = stop
        await self.queue.ensure_group()
        await asyncio.to_thread(self.storage.sweep, STALE_FILES_S)
        with contextlib.suppress(Exception):
            await self.queue.prune_consumers(STALE_CONSUMERS_S)
        log.info("worker %s started", self.name)
        while not stop.is_set():
            try:
                await self._update_depth()
                delivery = await self._take_unless_stopped(stop)
                if delivery is not None:
                    await self.handle(delivery)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down, storage hiccup: wait a little and go on
                log.warning("worker %s: %s: %s", self.name, type(exc).__name__, exc)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.config.block_s)
        with contextlib.suppress(Exception):
            await self.queue.forget_consumer(self.name)
        log.info("worker %s stopped", self.name)

    async def _take_unless_stopped(self, stop: asyncio.Event) -> Delivery | None:
        """The next delivery, or None; a stop while waiting for one ends the wait at once.

        (A read cut off just as the server handed out an entry leaves that entry with this worker's
        consumer: another worker takes it over after the claim time, as after a crash.)
        """
        take = asyncio.create_task(self.queue.take(self.name, int(self.config.block_s * 1000)))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({take, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not take.done():
            take.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await take
            return None
        return take.result()

    async def _update_depth(self) -> None:
        depth = await self.queue.depth()
        self.metrics.queue_depth.set(depth.waiting + depth.running)
        self.metrics.queue_running.set(depth.running)

    # --- one delivery ------------------------------------------------------------------------
    async def handle(self, delivery: Delivery) -> None:
        """Run one try of the delivered job (or end it, if it already ended or used up its tries)."""
        owner = f"{self.name}/{delivery.entry_id}/{delivery.tries}"
        if not delivery.job_id:
            await self.queue.done(delivery)
            return
        if delivery.tries > self.config.max_tries:
            await self._give_up(delivery)
            return
        state = await self.jobs.start(delivery.job_id, owner)
        if state != "ok":  # ended meanwhile, or its record expired: nothing left to do but clean up
            await self._close(delivery)
            return
        job = await self.jobs.get(delivery.job_id)
        if job is None:
            await self._close(delivery)
            return
        if job.attempts == 1:
            self.metrics.queue_wait.observe(max(0.0, time.time() - job.created_at))
        log.info("job %s (video %s): try %d on %s", job.job_id, job.video_id, delivery.tries, self.name)
        started = time.monotonic()
        try_state = TryState(self.config.job_timeout_s)
        beat = asyncio.create_task(self._heartbeat(delivery, owner, try_state))
        try:
            outcome = await self._attempt(job, owner, delivery, try_state)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        self.metrics.duration.observe(time.monotonic() - started)
        self.metrics.jobs.labels(outcome).inc()
        log.info("job %s: try %d %s", job.job_id, delivery.tries, outcome)

    async def _give_up(self, delivery: Delivery) -> None:
        """The entry was delivered more often than allowed (its workers kept dying): fail the job."""
        job = await self.jobs.get(delivery.job_id)
        last = (job.last_error if job else None) or {
            "code": "worker_lost",
            "message": "the worker running it stopped before finishing (crashed, killed or out of memory)"}
        error = JobError(last["code"], f"The job was given up after {self.config.max_tries} tries; the last one "
                                       f"failed: {last['message']}")
        if await self.jobs.fail(delivery.job_id, "", error):
            self.metrics.jobs.labels("failed").inc()
        await self._close(delivery)

    async def _close(self, delivery: Delivery) -> None:
        """The job has ended: acknowledge its entry and delete its upload."""
        await self.queue.done(delivery)
        await asyncio.to_thread(self.storage.delete, delivery.job_id)

    async def _heartbeat(self, delivery: Delivery, owner: str, state: TryState) -> None:
        """Renew the entry, write progress, enforce the try's timeout and the shutdown grace."""
        tick = min(1.0, self.config.heartbeat_s)
        last_beat = time.monotonic()
        written = -1.0
        stop_seen: float | None = None
        while True:
            if self._stopping is not None and stop_seen is None:
                with contextlib.suppress(TimeoutError):  # wake up at once when the worker is told to stop
                    await asyncio.wait_for(self._stopping.wait(), timeout=tick)
            else:
                await asyncio.sleep(tick)
            now = time.monotonic()
            try:
                if now - last_beat >= self.config.heartbeat_s:
                    last_beat = now
                    if not await self.queue.heartbeat(delivery, self.name):
                        state.abort("lost")
                fraction = round(state.fraction * EXTRACTION_SHARE, 3)
                if fraction != written:
                    written = fraction
                    if not await self.jobs.progress(delivery.job_id, owner, fraction):
                        state.abort("lost")
            except Exception as exc:  # keep trying: a short Redis outage must not stop the job
                log.warning("job %s: heartbeat failed: %s", delivery.job_id, exc)
            if now > state.deadline:
                state.abort("timeout")
            if self._stopping is not None and self._stopping.is_set():
                stop_seen = stop_seen or now
                if now - stop_seen >= self.config.shutdown_grace_s:
                    state.abort("shutdown")

    async def _attempt(self, job: JobRecord, owner: str, delivery: Delivery, state: TryState) -> str:
        """One try; returns its outcome (a label of ``trdetr_ingest_jobs_total``)."""
        try:
            result = await self._extract_and_store(job, owner, state)
        except TryAborted as exc:
            return await self._aborted(job, owner, delivery, exc.reason)
        except ExtractionError as exc:
            return await self._failed(job, owner, delivery, JobError(exc.code, exc.message))
        except UploadMissing as exc:
            return await self._failed(job, owner, delivery, JobError(
                "upload_missing", f"The uploaded file is gone from the upload store ({exc}); upload the video again."))
        except ServiceError as exc:
            error = JobError(exc.code, exc.message)
            if exc.status >= 500:  # the feature cache was unreachable: try again
                return await self._transient(job, owner, delivery, error)
            return await self._failed(job, owner, delivery, error)
        except Exception as exc:
            log.exception("job %s: try %d failed", job.job_id, delivery.tries)
            return await self._transient(job, owner, delivery, JobError("internal_error", f"{type(exc).__name__}: {exc}"))
        if result is None:
            return "lost"
        if await self.jobs.succeed(job.job_id, owner, result):
            await self._close(delivery)
            return "succeeded"
        return "lost"

    async def _extract_and_store(self, job: JobRecord, owner: str, state: TryState) -> dict[str, Any] | None:
        """Extract, validate and store; returns the job's result, or None when this try lost the job."""
        config = self.config
        path = await asyncio.to_thread(self.storage.fetch, job.job_id)
        try:
            started = time.monotonic()
            video = await asyncio.to_thread(
                self.extractor.extract, path, max_duration_s=config.max_clips * self.pre.clip_length_s,
                progress=state.report)
            extraction_s = time.monotonic() - started
        finally:
            await asyncio.to_thread(self.storage.release, job.job_id, path)
        if video.duration_s > 0:
            self.metrics.extraction_speed.observe(extraction_s / video.duration_s)
        parsed = await asyncio.to_thread(
            parse_video, npz_bytes(video), "npz", self.pre, max_clips=config.max_clips,
            max_unpacked_bytes=config.max_unpacked_bytes)
        if state.abort_reason is not None:
            raise TryAborted(state.abort_reason)
        if not await self.jobs.is_latest(job):
            raise _Superseded()
        if not await self.jobs.progress(job.job_id, owner, EXTRACTION_SHARE):
            return None
        # the creator's videos, under its quota: exactly the call of PUT /v1/videos/{id}/features
        # the extraction's notes (groups cut to one length, damaged packets, a silent file's zero audio) are
        # stored with the video, so GET /v1/videos/{id} and the job's answer say what was adjusted
        meta = video_meta(parsed)
        meta["notes"] = [*meta["notes"], *video.notes]
        stored = await self.store.tenant(job.tenant).put(job.video_id, parsed.features, meta, job.collections)
        return {"version": stored.get("version"), "num_clips": parsed.num_clips, "extraction_notes": video.notes,
                "extraction_s": round(extraction_s, 3), "video_duration_s": video.duration_s}

    async def _failed(self, job: JobRecord, owner: str, delivery: Delivery, error: JobError) -> str:
        """A failure that another try would repeat: the job ends ``failed``."""
        if await self.jobs.fail(job.job_id, owner, error):
            await self._close(delivery)
            return "failed"
        return "lost"

    async def _transient(self, job: JobRecord, owner: str, delivery: Delivery, error: JobError) -> str:
        """A failure another try may not repeat: try again after a back-off, until the tries run out."""
        if delivery.tries >= self.config.max_tries:
            final = JobError(error.code, f"The job failed on each of its {self.config.max_tries} tries; the last "
                                         f"one: {error.message}")
            return await self._failed(job, owner, delivery, final)
        if not await self.jobs.requeue(job.job_id, owner, f"retry: {error.code}", error):
            return "lost"
        backoff = min(self.config.claim_idle_s, 2.0 ** (delivery.tries - 1))
        await self.queue.release(delivery, self.name, counted=True, after_s=backoff)
        return "retried"

    async def _aborted(self, job: JobRecord, owner: str, delivery: Delivery, reason: str) -> str:
        if reason == "lost":
            return "lost"
        if reason == "superseded":
            return await self._failed(job, owner, delivery, JobError(
                "superseded", "A later upload for the same video id replaced this one before it finished; "
                              "the video holds the later upload's features."))
        if reason == "timeout":
            return await self._transient(job, owner, delivery, JobError(
                "job_timeout", f"Extraction ran longer than TRDETR_JOB_TIMEOUT_S ({self.config.job_timeout_s:g} s). "
                               "Send a shorter video, or raise the limit."))
        # shutdown: give the job back without using up a try
        if not await self.jobs.requeue(job.job_id, owner, "released", None):
            return "lost"
        await self.queue.release(delivery, self.name, counted=False)
        return "released"


class _Superseded(TryAborted):
    def __init__(self) -> None:
        super().__init__("superseded")
