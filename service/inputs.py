"""Turn a search request into model inputs: the video ``(T, D)`` and one ``(L, text_dim)`` per query."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import Request

from service.cache import TenantStore
from service.dependencies import Runtime
from service.errors import InvalidInput
from service.schemas import QueryIn, SearchRequest
from service.uploads import decode_base64, parse_query_features, parse_video


@dataclass(frozen=True)
class SearchInputs:
    """``video`` the model's video input (T, video_input_dim: normalised features + TEF, possibly a shared
    read-only array); ``texts`` N arrays (L_i, text_dim)."""

    video_id: str | None
    video: np.ndarray
    texts: list[np.ndarray]
    query_texts: list[str | None]

    @property
    def num_clips(self) -> int:
        return int(self.video.shape[0])


def check_query_count(count: int, max_queries: int) -> None:
    """422 ``too_many_queries`` beyond ``max_queries`` (``TRDETR_MAX_QUERIES_PER_REQUEST``)."""
    if count > max_queries:
        raise InvalidInput(
            f"{count} queries in one request; at most {max_queries} are allowed. Split them over several requests.",
            {"queries": count, "max_queries": max_queries}, code="too_many_queries",
        )


def precheck_search_body(data: Any, request: Request) -> None:
    """Before pydantic builds any object: refuse a ``queries`` list longer than the limit."""
    if isinstance(data, dict) and isinstance(queries := data.get("queries"), list):
        check_query_count(len(queries), request.app.state.runtime.settings.max_queries_per_request)


def search_body_max_values(request: Request) -> int:
    """Most JSON values a search body may hold: every query's text could be all commas, plus the fields."""
    settings = request.app.state.runtime.settings
    return settings.max_queries_per_request * (settings.max_query_chars + 8) + 256


def check_query_limits(runtime: Runtime, queries: list[QueryIn]) -> None:
    """422 for too many queries, over-long texts, or text queries without a text encoder."""
    settings = runtime.settings
    check_query_count(len(queries), settings.max_queries_per_request)
    for index, query in enumerate(queries):
        if query.text is not None and len(query.text) > settings.max_query_chars:
            raise InvalidInput(
                f"queries[{index}] has {len(query.text)} characters; at most {settings.max_query_chars} are "
                "allowed.", {"index": index, "max_chars": settings.max_query_chars}, code="query_too_long",
            )
    assert runtime.bundle is not None
    if runtime.bundle.text_encoder is None and any(q.text is not None for q in queries):
        raise InvalidInput(
            "This model bundle has no text encoder, so text queries cannot be encoded. Send query features "
            f"instead ('features_b64': a .npy of ({runtime.bundle.pre.text_dim}-d) token features: "
            f"{runtime.bundle.pre.text_encoder.expected}), or export the bundle with a text encoder.",
            code="text_encoder_missing",
        )


def _decode_feature_queries(runtime: Runtime, queries: list[QueryIn]) -> list[np.ndarray | None]:
    """Precomputed query features, normalised; None where the query is a text."""
    assert runtime.bundle is not None
    pre = runtime.bundle.pre
    return [
        parse_query_features(decode_base64(q.features_b64, f"queries[{i}].features_b64"), pre, i)
        if q.features_b64 is not None else None
        for i, q in enumerate(queries)
    ]


async def _encode_queries(runtime: Runtime, queries: list[QueryIn]) -> list[np.ndarray]:
    """One (L_i, text_dim) array per query; text queries go through the shared text path (LRU, batched
    across concurrent requests: :mod:`service.inference.text_queries`)."""
    features = _decode_feature_queries(runtime, queries)  # small arrays: cheaper than a thread hop
    text_rows = [i for i, q in enumerate(queries) if q.text is not None]
    if text_rows:
        assert runtime.text is not None
        # one call per query keeps each 422 naming its own index; the calls still share one encoder run
        encoded = await asyncio.gather(*(runtime.text.encode([queries[i].text or ""], i) for i in text_rows))
        for row, arrays in zip(text_rows, encoded, strict=True):
            features[row] = arrays[0]
    return [array for array in features if array is not None]


def _inline_video_input(runtime: Runtime, data: bytes, fmt: str) -> np.ndarray:
    """An inline ``.npy``/``.npz`` validated like an upload, as the model's video input (worker thread)."""
    assert runtime.bundle is not None
    parsed = parse_video(data, fmt, runtime.bundle.pre, max_clips=runtime.max_clips,
                         max_unpacked_bytes=4 * runtime.settings.max_body_bytes)
    return runtime.bundle.video_input(parsed.features)


async def _load_video(runtime: Runtime, request: SearchRequest, store: TenantStore) -> np.ndarray:
    """The model's video input: the tenant's stored features (Redis / the local LRU), or the inline file."""
    if request.video_id is not None:
        return await store.video_input(request.video_id)
    assert request.video is not None
    body = decode_base64(request.video.data_b64, "video.data_b64")
    return await runtime.workers.decode_file(_inline_video_input, runtime, body, request.video.format)


async def resolve_inputs(runtime: Runtime, request: SearchRequest, store: TenantStore) -> SearchInputs:
    """Validate limits, then fetch the video while the queries are decoded/encoded (422/404/503 on problems).

    The video's task goes first, so its Redis request is on the wire while the query features are
    decoded on the event loop.
    """
    queries = request.query_objects()
    check_query_limits(runtime, queries)
    video, texts = await asyncio.gather(_load_video(runtime, request, store), _encode_queries(runtime, queries))
    return SearchInputs(request.video_id, video, texts, [q.text for q in queries])
