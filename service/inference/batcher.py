"""Dynamic batching: rows of concurrent requests as padded ONNX Runtime runs, shared fairly.

A *job* is one request: one video (its model input ``(T, D_v)``, TEF included), the video's window plan
(``trdetr_common.windows``: one window for a video the model can take whole, K overlapping windows of the
model's length for a longer one) and ``N`` queries ``(L_t, D_t)``. Every (query, window) pair is a *row*:
``N x K`` rows. A row's video is a window of the job's array, copied straight into the run's padded batch
(TEF rewritten relative to the window), so a request never holds more than the run being built: never
``N x K`` copies of its video.

The loop keeps up to ``max_batch_size`` admitted jobs and builds each run of at most ``max_batch_size`` rows
by round robin over them (:func:`fair_shares`): every admitted job gets an equal share of the run, and the
job that starts the order rotates. A request with more rows than one run (many queries, a long video) is
split over several runs, and a short request arriving meanwhile joins the very next run instead of waiting
for the long one to finish. The loop waits up to ``max_wait_ms`` for more jobs only while the run is not full
and other requests are still preparing their inputs (see :meth:`DynamicBatcher.preparing`), so a lone
request never pays the wait.

Every row is padded to the run's longest text and window and the model runs once per run, in a worker
thread (never on the event loop). The exported model is batch-invariant, so a row's outputs do not depend
on what it was batched with; outputs are cut back to each row's window length. A job whose deadline
passed (504) or whose request went away is dropped before its next run and consumes no more runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.errors import ServiceError
from service.inference.admission import Admission
from service.metrics import Metrics
from service.timing import add_model_time
from trdetr_common.features import pad_batch
from trdetr_common.windows import WindowOutput, WindowPlan, fill_window, plan_windows, window_input

log = logging.getLogger(__name__)

ModelFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


#: The model's answer for one row (query x window): ``pred_logits`` (Q, 2), ``pred_spans`` (Q, 2) normalised
#: (cx, w) by the window, ``saliency`` (L,) cut to the window's real length.
RowOutput = WindowOutput


@dataclass
class _Job:
    """One request: ``texts`` N arrays (L_t, D_t), ``video`` (T, D_v), ``plan`` its windows; N x K rows.

    Row ``r`` is query ``r // K`` on window ``r % K``. ``dispatched`` rows went to runs, ``delivered`` came back.
    """

    texts: list[np.ndarray]
    video: np.ndarray
    plan: WindowPlan
    tef: bool | tuple[int, ...]
    future: asyncio.Future[list[list[RowOutput]]]
    enqueued_at: float = field(default_factory=time.perf_counter)
    outputs: list[RowOutput | None] = field(default_factory=list)
    dispatched: int = 0
    delivered: int = 0
    runs: int = 0
    model_s: float = 0.0  # wall time of the runs that carried its rows

    def __post_init__(self) -> None:
        self.outputs = [None] * self.rows

    @property
    def rows(self) -> int:
        return len(self.texts) * self.plan.num_windows

    @property
    def pending(self) -> int:
        """Rows not yet handed to a run."""
        return self.rows - self.dispatched

    def row_input(self, row: int) -> tuple[np.ndarray, int]:
        """(text, window start) of row ``row``."""
        query, window = divmod(row, self.plan.num_windows)
        return self.texts[query], self.plan.starts[window]

    def by_query(self) -> list[list[RowOutput]]:
        """The delivered rows as N lists of K window outputs (plan order)."""
        windows = self.plan.num_windows
        return [list(self.outputs[q * windows:(q + 1) * windows]) for q in range(len(self.texts))]  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Slice:
    """Rows ``[first, stop)`` of one job, taken into one run."""

    job: _Job
    first: int
    stop: int

    @property
    def rows(self) -> range:
        return range(self.first, self.stop)


def fair_shares(pending: list[int], capacity: int) -> list[int]:
    """Rows to take from each job for one run: round robin, one row at a time, in the given order.

    Args:
        pending: rows each job still has to run.
        capacity: rows in the run (``max_batch_size``).
    Returns:
        rows per job; their sum is ``min(capacity, sum(pending))`` and no two jobs' shares differ by more
        than one unless the smaller one has no rows left; jobs earlier in the order get the remainder.
    """
    shares = [0] * len(pending)
    left = capacity
    open_jobs = [i for i, rows in enumerate(pending) if rows > 0]
    while left > 0 and open_jobs:
        each = max(1, left // len(open_jobs))
        for i in open_jobs:
            take = min(each, pending[i] - shares[i], left)
            shares[i] += take
            left -= take
        open_jobs = [i for i in open_jobs if shares[i] < pending[i]]
    return shares


def build_batch(slices: list[_Slice]) -> dict[str, np.ndarray]:
    """Pad every row of ``slices`` into the model's four inputs.

    Returns ``src_txt`` (B, L_t, D_t), ``src_txt_mask`` (B, L_t), ``src_vid`` (B, L_v, D_v) and
    ``src_vid_mask`` (B, L_v), float32 with masks 1 = valid, B = rows of the slices, L_v = longest window.
    Each row's window is copied once, into the batch (:func:`trdetr_common.windows.fill_window`).
    """
    rows = [(piece.job, *piece.job.row_input(r)) for piece in slices for r in piece.rows]
    if len(rows) == 1:
        job, text, start = rows[0]
        return _single_row(text, window_input(job.video, start, job.plan.length, tef=job.tef))
    src_txt, txt_mask = pad_batch([text for _, text, _ in rows])
    longest = max(job.plan.length for job, _, _ in rows)
    src_vid = np.zeros((len(rows), longest, rows[0][0].video.shape[1]), dtype=np.float32)
    vid_mask = np.zeros((len(rows), longest), dtype=np.float32)
    for index, (job, _, start) in enumerate(rows):
        fill_window(src_vid[index], job.video, start, job.plan.length, tef=job.tef)
        vid_mask[index, :job.plan.length] = 1.0
    return {
        "src_txt": np.asarray(src_txt, dtype=np.float32),
        "src_txt_mask": np.asarray(txt_mask, dtype=np.float32),
        "src_vid": src_vid,
        "src_vid_mask": vid_mask,
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


def split_outputs(slices: list[_Slice], outputs: dict[str, np.ndarray]) -> list[list[RowOutput]]:
    """Cut the run's outputs back into one list of :class:`RowOutput` per slice (saliency cut to the window)."""
    results: list[list[RowOutput]] = []
    row = 0
    for piece in slices:
        clips = piece.job.plan.length
        results.append([
            RowOutput(
                pred_logits=outputs["pred_logits"][r],
                pred_spans=outputs["pred_spans"][r],
                saliency=outputs["saliency_scores"][r, :clips],
            )
            for r in range(row, row + len(piece.rows))
        ])
        row += len(piece.rows)
    return results


def _deliver(slices: list[_Slice], results: list[list[RowOutput]]) -> None:
    """Event loop: store each slice's rows in its job; a job with every row back gets its answer."""
    for piece, rows in zip(slices, results, strict=True):
        job = piece.job
        if job.future.done():
            continue
        job.outputs[piece.first:piece.stop] = rows
        job.delivered += len(rows)
        if job.delivered == job.rows:
            job.future.set_result(job.by_query())


def _expire(future: asyncio.Future[list[list[RowOutput]]], timeout_s: float) -> None:
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
    """Bounded queue + one background task that runs fair, coalesced batches in a worker thread."""

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
        self._active: deque[_Job] = deque()  # admitted jobs with rows not yet run, in round-robin order
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
        """Requests waiting for inference now: queued, or admitted with rows not yet run."""
        return self._queue.qsize() + sum(1 for job in self._active if not job.future.done())

    def _update_depth(self) -> None:
        self._metrics.queue_depth.set(self.queue_depth)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="dynamic-batcher")

    async def stop(self) -> None:
        """Stop the loop, fail waiting requests with 503 and release the worker thread."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        pending = list(self._active)
        while not self._queue.empty():
            pending.append(self._queue.get_nowait())
        _fail(pending, ServiceError(503, "shutting_down", "The service is shutting down; retry on another replica."))
        self._executor.shutdown(wait=True)

    async def infer(self, texts: list[np.ndarray], video: np.ndarray, timeout_s: float) -> list[RowOutput]:
        """One request on the whole video as a single window (``texts``: N arrays (L_t, D_t); ``video``
        (T, D_v), at most the model's length): one :class:`RowOutput` per query. See :meth:`infer_windows`."""
        plan = plan_windows(len(video), len(video), len(video))
        rows = await self.infer_windows(texts, video, plan, tef=False, timeout_s=timeout_s)
        return [windows[0] for windows in rows]

    async def infer_windows(
        self, texts: list[np.ndarray], video: np.ndarray, plan: WindowPlan, *, tef: bool | tuple[int, ...],
        timeout_s: float
    ) -> list[list[RowOutput]]:
        """Queue one request and await its rows: per query, one :class:`RowOutput` per window of ``plan``.

        ``video`` (T, D_v) is the whole video's model input; ``tef``: the columns where its TEF pairs start
        (``PreprocessingContract.tef_offsets``; ``True`` = the last two), rewritten for each window. Raises 429 when the queue is full or the measured queue would not answer it within
        ``timeout_s`` (:class:`~service.inference.admission.Admission`), and 504 when ``timeout_s`` passes
        first. The deadline is a timer that fails the job's own future (cheaper than ``wait_for`` +
        ``shield``); a job that timed out or whose request went away gets no further runs.
        """
        loop = asyncio.get_running_loop()
        job = _Job(texts=texts, video=video, plan=plan, tef=tef, future=loop.create_future())
        if self._queue.full():
            raise ServiceError(
                429, "queue_full", "Too many inference requests are waiting; retry shortly.",
                {"max_queue_size": self._queue.maxsize}, headers={"Retry-After": "1"},
            )
        self.admission.admit(job.rows, timeout_s)
        self._queue.put_nowait(job)
        self._metrics.request_windows.observe(plan.num_windows)
        self._update_depth()
        deadline = loop.call_later(timeout_s, _expire, job.future, timeout_s)
        try:
            return await job.future
        finally:
            deadline.cancel()
            self.admission.done(job.rows)
            add_model_time(job.model_s, job.runs)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            slices = await self._collect()
            if not slices:
                continue
            try:
                await loop.run_in_executor(self._executor, self._run, slices, loop)
            except asyncio.CancelledError:  # stopping mid-run: these requests get an answer too
                _fail([s.job for s in slices], ServiceError(503, "shutting_down", "The service is shutting down; retry."))
                raise
            except Exception as exc:  # a failed run fails its requests, never the loop
                log.exception("inference batch failed")
                _fail([s.job for s in slices], exc)

    async def _next_job(self, timeout_s: float | None) -> _Job | None:
        """The next queued job, waiting at most ``timeout_s`` (None: only one already queued)."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout_s) if timeout_s else self._queue.get_nowait()
        except (TimeoutError, asyncio.QueueEmpty):
            return None

    def _admit(self, job: _Job) -> None:
        """Join the round robin, unless its deadline passed while it was queued."""
        if not job.future.done():
            self._active.append(job)

    def _pending_rows(self) -> int:
        return sum(job.pending for job in self._active)

    async def _collect(self) -> list[_Slice]:
        """Admit jobs (waiting for the first as long as needed), then take the next run's rows fairly."""
        if not self._active:
            self._admit(await self._queue.get())
        deadline = time.perf_counter() + self._max_wait_s
        while len(self._active) < self._max_rows:
            if self._pending_rows() >= self._max_rows or (self._queue.empty() and self._preparing == 0):
                job = await self._next_job(None)  # the run is full or nobody else is coming: do not wait
            else:
                left = deadline - time.perf_counter()
                job = await self._next_job(left if left > 0 else None)
            if job is None:
                break
            self._admit(job)
        slices = self._take_run()
        self._update_depth()
        return slices

    def _take_run(self) -> list[_Slice]:
        """The next run: :func:`fair_shares` of ``max_batch_size`` rows over the live admitted jobs.

        Jobs whose request already has an answer (504, gone) are dropped; jobs with every row dispatched
        leave the round robin; the job that starts the order rotates, so remainders are shared too.
        """
        self._active = deque(job for job in self._active if not job.future.done())
        jobs = list(self._active)
        slices = []
        now = time.perf_counter()
        for job, share in zip(jobs, fair_shares([job.pending for job in jobs], self._max_rows), strict=True):
            if share == 0:
                continue
            if job.dispatched == 0:
                self._metrics.queue_wait.observe(now - job.enqueued_at)
            slices.append(_Slice(job, job.dispatched, job.dispatched + share))
            job.dispatched += share
            job.runs += 1
            if job.pending == 0:
                self._active.remove(job)
                self._metrics.request_runs.observe(job.runs)
        if self._active:
            self._active.rotate(-1)
        return slices

    def _run(self, slices: list[_Slice], loop: asyncio.AbstractEventLoop) -> None:
        """Worker thread: pad, run the model once, split, and hand each job its rows on the event loop.

        The answers go to the loop directly (one wake-up) rather than back through the batcher task.
        Records rows per run, requests per run and compute time.
        """
        start = time.perf_counter()
        feeds = build_batch(slices)
        model_start = time.perf_counter()
        outputs = self.model_fn(feeds)
        end = time.perf_counter()
        seconds, rows = end - start, sum(len(piece.rows) for piece in slices)
        for piece in slices:  # Server-Timing "model": the ORT run alone (padding counts as in-app overhead)
            piece.job.model_s += end - model_start
        self.admission.ran(rows, seconds)
        self._metrics.compute.observe(seconds)
        self._metrics.batch_size.observe(rows)
        self._metrics.batch_requests.observe(len(slices))
        loop.call_soon_threadsafe(_deliver, slices, split_outputs(slices, outputs))
