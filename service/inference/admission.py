"""Admission control for the inference queue: refuse work that could not finish before its deadline.

A full queue (``TRDETR_MAX_QUEUE_SIZE``) was the only refusal, so under load requests queued for longer
than their deadline and failed late with 504 after using memory and a connection all along. Here the
batcher measures what each run costs per query row (an exponentially weighted mean of the real ONNX
Runtime runs) and, before queueing a request, estimates its wait: the rows already admitted and not
yet answered, plus its own, times that cost. When the estimate is longer than the time the request
has left, it is refused at once: 429 ``overloaded`` with a ``Retry-After`` from the same estimate.

Rows run in batches, and a batch of many rows costs less per row than a lone one, so an estimate from
lightly loaded (small) runs is pessimistic for a long queue, which runs as full batches; the mean then
moves to the full batches' cost within a few runs.
"""

from __future__ import annotations

import math

from service.errors import ServiceError

_WEIGHT = 0.2  # of the newest run in the running mean


class Admission:
    """Rows pending for inference and the measured seconds per row."""

    def __init__(self) -> None:
        self.pending_rows = 0
        self.seconds_per_row: float | None = None  # unknown until the first run

    def expected_wait_s(self, rows: int) -> float:
        """Seconds until ``rows`` more rows would be answered, from the runs measured so far."""
        if self.seconds_per_row is None:
            return 0.0
        return (self.pending_rows + rows) * self.seconds_per_row

    def admit(self, rows: int, time_left_s: float) -> None:
        """Count ``rows`` as pending, or raise 429 ``overloaded`` if they could not be answered in time."""
        wait = self.expected_wait_s(rows)
        if wait > time_left_s:
            retry = max(1, math.ceil(wait - time_left_s))
            raise ServiceError(
                429, "overloaded",
                f"The inference queue would take about {wait:.1f} s to answer this request, longer than the "
                f"{time_left_s:.1f} s it has left before its deadline. Retry in {retry} s.",
                {"expected_wait_s": round(wait, 3), "time_left_s": round(time_left_s, 3)},
                headers={"Retry-After": str(retry)},
            )
        self.pending_rows += rows

    def done(self, rows: int) -> None:
        """``rows`` were answered, failed or gave up."""
        self.pending_rows -= rows

    def ran(self, rows: int, seconds: float) -> None:
        """One run of ``rows`` rows took ``seconds`` (called from the inference thread)."""
        per_row = seconds / max(rows, 1)
        previous = self.seconds_per_row
        self.seconds_per_row = per_row if previous is None else (1 - _WEIGHT) * previous + _WEIGHT * per_row
