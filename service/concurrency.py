"""Bounded worker pools, one per kind of blocking work, so one kind cannot starve another.

Decoding and validating feature files (uploads, inline videos: inflating a ``.npz``, checking and
normalising up to ``T x D`` values) and encoding query texts (an ONNX Runtime run) both leave the
event loop for a worker thread. Sharing one pool let 40 concurrent uploads hold every thread while
text-query searches waited 26 s. Decoding now has its own ``anyio.CapacityLimiter``: at most
``TRDETR_DECODE_CONCURRENCY`` files are decoded at once (the rest wait their turn, within the
request's deadline). Text encoding (:mod:`service.inference.text_queries`) and inference (the batcher)
each have their own thread.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")

class WorkerPools:
    """The service's bounded thread pools (created inside the running event loop, at start-up)."""

    def __init__(self, decode_threads: int) -> None:
        self.decode = anyio.CapacityLimiter(decode_threads)

    async def decode_file(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Run a feature-file decoder in the decode pool."""
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=self.decode)
