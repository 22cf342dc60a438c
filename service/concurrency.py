"""Bounded worker pools, one per kind of blocking work, so one kind cannot starve another.

Decoding and validating feature files (uploads, inline videos: inflating a ``.npz``, checking and
normalising up to ``T x D`` values) and encoding query texts (an ONNX Runtime run) both leave the
event loop for a worker thread. Sharing one pool let 40 concurrent uploads hold every thread while
text-query searches waited 26 s. Each kind now has its own ``anyio.CapacityLimiter``: at most
``TRDETR_DECODE_CONCURRENCY`` files are decoded at once (the rest wait their turn, within the
request's deadline), and text encoding has its own slots. Inference has the batcher's own thread.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")

TEXT_ENCODE_THREADS = 4
"""Concurrent text-encoder runs: enough to overlap tokenisation with ORT runs, few enough that
queries queue here rather than oversubscribe the cores ORT and the event loop share."""


class WorkerPools:
    """The service's bounded thread pools (created inside the running event loop, at start-up)."""

    def __init__(self, decode_threads: int, text_threads: int = TEXT_ENCODE_THREADS) -> None:
        self.decode = anyio.CapacityLimiter(decode_threads)
        self.text = anyio.CapacityLimiter(text_threads)

    async def decode_file(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Run a feature-file decoder in the decode pool."""
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=self.decode)

    async def encode_text(self, fn: Callable[..., T], *args: object) -> T:
        """Run the text encoder in its own pool."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.text)
