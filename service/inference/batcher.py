"""Dynamic batching: coalesce concurrent requests into padded ONNX Runtime runs.

A *job* is one request: one video ``(T, D_v)`` (TEF included) and its ``N`` queries, each
``(L_t, D_t)``; it becomes ``N`` rows of the batch. The loop takes the first waiting job, then
keeps taking jobs until ``max_batch_size`` rows are collected or ``max_wait_ms`` has passed. It
only waits while other requests are still preparing their inputs (see :meth:`DynamicBatcher.preparing`),
so a lone request never pays the wait. A request is never split: one with more queries than
``max_batch_size`` runs as a batch of its own.

Every row is padded to the batch's longest text and video and the model runs once, in a worker
thread (never on the event loop). The exported model is batch-invariant, so a row's outputs do
not depend on what it was batched with; the outputs are cut back to each row's real video length.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.errors import ServiceError
from service.inference.admission import Admission
from service.metrics import Metrics
from trdetr_common.features import pad_batch

log = logging.getLogger(__name__)

ModelFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class RowOutput:
    """The model's answer for one query row, cut to the video's real length.

    ``pred_logits`` (Q, 2), ``pred_spans`` (Q, 2) normalised (cx, w), ``saliency`` (T,).
    """

    pred_logits: np.ndarray
    pred_spans: np.ndarray
    saliency: np.ndarray


@dataclass
class _Job:
    texts: list[np.ndarray]
    video: np.ndarray
    future: asyncio.Future[list[RowOutput]]
    enqueued_at: float = field(default_factory=time.perf_counter)

    @property
    def rows(self) -> int:
        return len(self.texts)


def build_batch(jobs: list[_Job]) -> dict[str, np.ndarray]:
    """Pad every row of ``jobs`` into the model's four inputs.

    Returns ``src_txt`` (B, L_t, D_t), ``src_txt_mask`` (B, L_t), ``src_vid`` (B, L_v, D_v) and
    ``src_vid_mask`` (B, L_v), float32 with masks 1 = valid, B = total queries of the jobs.
    """
    texts = [text for job in jobs for text in job.texts]
    videos = [job.video for job in jobs for _ in job.texts]
    if len(texts) == 1:
        return _single_row(texts[0], videos[0])
    src_txt, txt_mask = pad_batch(texts)
    src_vid, vid_mask = pad_batch(videos)
    return {
        "src_txt": np.asarray(src_txt, dtype=np.float32),
        "src_txt_mask": np.asarray(txt_mask, dtype=np.float32),
        "src_vid": np.asarray(src_vid, dtype=np.float32),
        "src_vid_mask": np.asarray(vid_mask, dtype=np.float32),
    }


def _single_row(text: np.ndarray, video: np.ndarray) -> dict[str, np.ndarray]:
    """A batch of one row has no padding: the arrays go to ORT as (1, L, D) views, not copies.

    ORT only reads its inputs, so a shared read-only video from the local cache is safe to pass.
    """
    return {
        "src_txt": np.ascontiguousarray(text[None], dtype=np.float32),
        "src_txt_mask": np.ones((1, len(text)), dtype=np.float32),
        "src_vid": np.ascontiguousarray(video[None], dtype=np.float32),
        "src_vid_mask": np.ones((1, len(video)), dtype=np.float32),
    }


def split_outputs(jobs: list[_Job], outputs: dict[str, np.ndarray]) -> list[list[RowOutput]]:
    """Cut the batch outputs back into one list of :class:`RowOutput` per job."""
    results: list[list[RowOutput]] = []
    row = 0
    for job in jobs:
        clips = job.video.shape[0]
        rows = [
            RowOutput(
                pred_logits=outputs["pred_logits"][r],
                pred_spans=outputs["pred_spans"][r],
                saliency=outputs["saliency_scores"][r, :clips],
            )
            for r in range(row, row + job.rows)
        ]
        results.append(rows)
        row += job.rows
    return results


def _deliver(jobs: list[_Job], results: list[list[RowOutput]]) -> None:
    """Event loop: give each still-waiting job its rows."""
    for job, rows in zip(jobs, results, strict=True):
        if not job.future.done():
            job.future.set_result(rows)


def _expire(future: asyncio.Future[list[RowOutput]], timeout_s: float) -> None:
    """Event loop, at a request's deadline: fail it with 504 unless it has its answer."""
    if not future.done():
        future.set_exception(ServiceError(
            504, "deadline_exceeded", f"Inference did not finish within {timeout_s:g} s; the service is "
            "overloaded. Retry later or send fewer queries per request.", {"timeout_s": timeout_s},
        ))


def _fail(jobs: list[_Job], exc: BaseException) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(exc)


class DynamicBatcher:
    """Bounded queue + one background task that runs coalesced batches in a worker thread."""

    def __init__(
        self,
        model_fn: ModelFn,
        *,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue_size: int,
        metrics: Metrics,
    ) -> None:
        self.model_fn = model_fn
        self._max_rows = max_batch_size
        self._max_wait_s = max_wait_ms / 1000.0
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=max_queue_size)
        self._metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ort-batch")
        self._task: asyncio.Task[None] | None = None
        self._carry: _Job | None = None
        self._preparing = 0
        self.admission = Admission()

    @contextlib.contextmanager
    def preparing(self) -> Iterator[None]:
        """Announce a request that will submit a job soon (it is fetching features / encoding text).

        The batcher waits up to ``max_wait_ms`` for more jobs only while such requests exist.
        """
        self._preparing += 1
        try:
            yield
        finally:
            self._preparing -= 1

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch now."""
        return self._queue.qsize()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="dynamic-batcher")

    async def stop(self) -> None:
        """Stop the loop, fail waiting requests with 503 and release the worker thread."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        pending = [self._carry] if self._carry else []
        while not self._queue.empty():
            pending.append(self._queue.get_nowait())
        _fail(pending, ServiceError(503, "shutting_down", "The service is shutting down; retry on another replica."))
        self._executor.shutdown(wait=True)

    async def infer(self, texts: list[np.ndarray], video: np.ndarray, timeout_s: float) -> list[RowOutput]:
        """Queue one request (``texts``: N arrays (L_t, D_t); ``video`` (T, D_v)) and await its rows.

        Raises 429 when the queue is full or the measured queue would not answer it within
        ``timeout_s`` (:class:`~service.inference.admission.Admission`), and 504 when ``timeout_s``
        passes first. The deadline is a timer that fails the job's own future (cheaper than
        ``wait_for`` + ``shield``); a job that timed out or whose request went away is skipped by the
        batcher if it has not run yet.
        """
        loop = asyncio.get_running_loop()
        job = _Job(texts=texts, video=video, future=loop.create_future())
        if self._queue.full():
            raise ServiceError(
                429, "queue_full", "Too many inference requests are waiting; retry shortly.",
                {"max_queue_size": self._queue.maxsize}, headers={"Retry-After": "1"},
            )
        self.admission.admit(job.rows, timeout_s)
        self._queue.put_nowait(job)
        self._metrics.queue_depth.set(self._queue.qsize())
        deadline = loop.call_later(timeout_s, _expire, job.future, timeout_s)
        try:
            return await job.future
        finally:
            deadline.cancel()
            self.admission.done(job.rows)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            if not jobs:
                continue
            try:
                await loop.run_in_executor(self._executor, self._run, jobs, loop)
            except asyncio.CancelledError:  # stopping mid-run: these requests get an answer too
                _fail(jobs, ServiceError(503, "shutting_down", "The service is shutting down; retry."))
                raise
            except Exception as exc:  # a failed run fails its requests, never the loop
                log.exception("inference batch failed")
                _fail(jobs, exc)

    async def _next_job(self, timeout_s: float | None) -> _Job | None:
        """The next queued job, waiting at most ``timeout_s`` (None: only one already queued)."""
        try:
            job = await asyncio.wait_for(self._queue.get(), timeout_s) if timeout_s else self._queue.get_nowait()
        except (TimeoutError, asyncio.QueueEmpty):
            return None
        self._metrics.queue_depth.set(self._queue.qsize())
        return job

    async def _collect(self) -> list[_Job]:
        """First live job (waiting as long as needed), then more until the batch is full or the wait ends."""
        first = self._carry or await self._queue.get()
        self._carry = None
        self._metrics.queue_depth.set(self._queue.qsize())
        jobs = [first] if not first.future.done() else []
        rows = first.rows if jobs else 0
        deadline = time.perf_counter() + self._max_wait_s
        while rows < self._max_rows:
            if self._queue.empty() and self._preparing == 0:
                break  # nobody else is coming: do not wait
            left = deadline - time.perf_counter()
            job = await self._next_job(left if left > 0 else None)
            if job is None:
                break
            if job.future.done():  # its deadline passed while queued
                continue
            if rows + job.rows > self._max_rows and jobs:
                self._carry = job
                break
            jobs.append(job)
            rows += job.rows
        now = time.perf_counter()
        for job in jobs:
            self._metrics.queue_wait.observe(now - job.enqueued_at)
        return jobs

    def _run(self, jobs: list[_Job], loop: asyncio.AbstractEventLoop) -> None:
        """Worker thread: pad, run the model once, split, and hand each job its rows on the event loop.

        The answers go to the loop directly (one wake-up) rather than back through the batcher task.
        Records batch size and compute time.
        """
        start = time.perf_counter()
        outputs = self.model_fn(build_batch(jobs))
        seconds, rows = time.perf_counter() - start, sum(job.rows for job in jobs)
        self.admission.ran(rows, seconds)
        self._metrics.compute.observe(seconds)
        self._metrics.batch_size.observe(rows)
        self._metrics.batch_requests.observe(len(jobs))
        loop.call_soon_threadsafe(_deliver, jobs, split_outputs(jobs, outputs))
