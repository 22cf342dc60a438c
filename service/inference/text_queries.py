"""Query texts -> token features, batched across concurrent requests, with an LRU of encoded queries.

A real-size CLIP text tower costs about as much per query as TR-DETR itself, and search traffic repeats
queries. So:

- every text is first cleaned as the bundle says (:meth:`TextEncoder.clean`: the *normalised* text); the
  LRU is keyed by ``(encoder identity, normalised text)`` (the identity is a sha256 of the encoder and
  tokenizer files, the cleaning and the token selection), and a hit costs no model run at all;
- a text already being encoded for another request is awaited, not encoded twice;
- misses are tokenised in the request (a text over the context length is its own request's 422) and
  queued; one background task takes everything queued -- up to ``max_batch`` texts -- into one padded
  ONNX Runtime run in its own thread. While a run is in flight new texts pile up and go together into the
  next one, so batches grow with load and a lone request never waits for company.

The CLIP text transformer is causal, so a text's features do not depend on the padding of the batch it ran
in (tests check the batched answers equal one-at-a-time ones). Cached arrays are read-only and shared.
An entry holds both outputs of the encoder run (:class:`EncodedText`): the token features for the model and,
when the bundle has it, the projected text embedding for stage-1 search (:meth:`TextQueryEncoder.encode_texts`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from service.inference.text_encoder import EncodedText, TextEncoder
from service.metrics import Metrics

log = logging.getLogger(__name__)

Key = tuple[str, str]


@dataclass
class _Pending:
    key: Key
    token_ids: list[int]
    future: asyncio.Future[EncodedText]


class EncodedQueryCache:
    """LRU of encoded queries: ``(encoder identity, normalised text)`` -> read-only :class:`EncodedText`."""

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self._items: OrderedDict[Key, EncodedText] = OrderedDict()

    def get(self, key: Key) -> EncodedText | None:
        encoded = self._items.get(key)
        if encoded is not None:
            self._items.move_to_end(key)
        return encoded

    def put(self, key: Key, encoded: EncodedText) -> None:
        if self.entries == 0:
            return
        encoded.tokens.setflags(write=False)
        if encoded.embed is not None:
            encoded.embed.setflags(write=False)
        self._items[key] = encoded
        self._items.move_to_end(key)
        while len(self._items) > self.entries:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class TextQueryEncoder:
    """The service's text path: LRU, de-duplication of in-flight texts, batched encoder runs."""

    def __init__(self, encoder: TextEncoder, *, cache_entries: int, max_batch: int, metrics: Metrics) -> None:
        self.encoder = encoder
        self.cache = EncodedQueryCache(cache_entries)
        self._max_batch = max_batch
        self._metrics = metrics
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._in_flight: dict[Key, asyncio.Future[EncodedText]] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="text-encode")
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="text-encoder")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for future in self._in_flight.values():
            if not future.done():
                future.cancel()
        self._executor.shutdown(wait=True)

    async def encode(self, texts: list[str], first_index: int = 0) -> list[np.ndarray]:
        """One read-only ``(L_i, text_dim)`` float32 array per text (``first_index``: the index of
        ``texts[0]`` in the request, for error messages). 422 ``query_too_long`` as the encoder says."""
        return [encoded.tokens for encoded in await self.encode_texts(texts, first_index)]

    async def encode_texts(self, texts: list[str], first_index: int = 0) -> list[EncodedText]:
        """Like :meth:`encode`, with the projected text embedding (P,) of each text when the bundle has one."""
        identity = self.encoder.identity
        futures: list[asyncio.Future[EncodedText]] = []
        loop = asyncio.get_running_loop()
        for offset, text in enumerate(texts):
            key = (identity, self.encoder.clean(text))
            if (hit := self.cache.get(key)) is not None:
                self._metrics.text_cache.labels("hit").inc()
                future: asyncio.Future[EncodedText] = loop.create_future()
                future.set_result(hit)
            elif (running := self._in_flight.get(key)) is not None:
                self._metrics.text_cache.labels("in_flight").inc()
                future = running
            else:
                self._metrics.text_cache.labels("miss").inc()
                token_ids = self.encoder.token_ids([key[1]], first_index + offset)[0]
                future = loop.create_future()
                self._in_flight[key] = future
                self._queue.put_nowait(_Pending(key, token_ids, future))
            futures.append(future)
        # shared futures: a request that goes away (deadline, disconnect) must not cancel another's
        await asyncio.wait(futures)
        return [future.result() for future in futures]

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                arrays = await loop.run_in_executor(self._executor, self.encoder.encode_ids,
                                                    [item.token_ids for item in batch])
            except asyncio.CancelledError:
                self._finish(batch, None, RuntimeError("the service is shutting down"))
                raise
            except Exception as exc:  # a failed run fails its texts, never the loop
                log.exception("text encoder batch failed")
                self._finish(batch, None, exc)
            else:
                self._metrics.text_batch_size.observe(len(batch))
                self._finish(batch, arrays, None)

    def _finish(self, batch: list[_Pending], arrays: list[EncodedText] | None, exc: BaseException | None) -> None:
        for index, item in enumerate(batch):
            self._in_flight.pop(item.key, None)
            if item.future.done():
                continue
            if arrays is None:
                item.future.set_exception(exc or RuntimeError("text encoding failed"))
            else:
                self.cache.put(item.key, arrays[index])
                item.future.set_result(arrays[index])
