"""``POST /v1/search``: one query over many stored videos, ranked across them.

Stage 2 is TR-DETR itself: every candidate video (its windows, when it is longer than the model's) is a job
of the shared :class:`~service.inference.batcher.DynamicBatcher`, so the candidates' rows run in batched ONNX
Runtime runs, and a video's moments are exactly what ``POST /v1/moments`` answers for it (same merge, same
``nms_iou`` / ``min_score``, ``top_k`` = ``per_video_k``). At most ``TRDETR_MAX_BATCH_SIZE`` videos are
loaded and in flight at once, so memory stays bounded whatever the collection's size.

Stage 1 (:mod:`service.stage1`): a scope larger than ``TRDETR_SEARCH_CANDIDATES`` is narrowed to that many
videos by the CLIP similarity of the query's text embedding to each video's CLIP image summary, in the
tenant's vector index, and stage 2 runs on those (``stage1: "index"``). Videos in scope without a summary
(stored before summaries existed) can only fill candidate slots left over. When stage 1 cannot run -- the
bundle has no text embedding, or the query is given as token features (``features_b64``, no text) -- a scope
larger than ``TRDETR_SEARCH_EXHAUSTIVE_LIMIT`` is cut to its first videos in insertion order
(``stage1: "exhaustive_limit"``), and the response's notes say why.

The ranking (at most :data:`MAX_RANKED` moments) is kept in Redis for ``TRDETR_SEARCH_CURSOR_TTL_S``
under the tenant's key base; a cursor names it and an offset, so later pages are consistent with the
first and cost no inference.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from service.cache import TenantStore
from service.collections import Collections
from service.deadline import time_left
from service.dependencies import Runtime
from service.errors import InvalidInput, NotFound
from service.inputs import _encode_queries, check_query_limits
from service.schemas import CollectionSearchRequest, CollectionSearchResponse, QueryIn, SearchHit
from trdetr_common.windows import merge_moments

MAX_RANKED = 1000
"""Most moments one search ranks (and keeps for its cursor): with top_k <= 100, at least 10 pages."""

_CURSOR = re.compile(r"^s1\.([0-9a-f]{32})\.(\d{1,6})$")


@dataclass
class Ranking:
    """The ranked moments of one search and how its scope was searched."""

    hits: list[tuple[str, float, float, float]]  # (video_id, start, end, score), best first
    searched_videos: int
    candidate_videos: int
    stage1: str
    notes: list[str] = field(default_factory=list)


def check_video_id_count(count: int, limit: int) -> None:
    """422 ``too_many_video_ids`` beyond ``TRDETR_SEARCH_MAX_VIDEO_IDS``."""
    if count > limit:
        raise InvalidInput(
            f"{count} video_ids in one search; at most {limit} are allowed (TRDETR_SEARCH_MAX_VIDEO_IDS). Put the "
            "videos in a collection (PUT /v1/collections/{name}/videos/{video_id}) and search it by name.",
            {"video_ids": count, "max_video_ids": limit}, code="too_many_video_ids")


def precheck_collection_search(data: Any, request: Any) -> None:
    """Before pydantic builds any object: refuse a ``video_ids`` list longer than the limit."""
    if isinstance(data, dict) and isinstance(ids := data.get("video_ids"), list):
        check_video_id_count(len(ids), request.app.state.runtime.settings.search_max_video_ids)


def collection_search_max_values(request: Any) -> int:
    settings = request.app.state.runtime.settings
    return settings.search_max_video_ids + settings.max_query_chars + 256


def fingerprint(body: CollectionSearchRequest) -> str:
    """What a cursor's request must repeat: everything that decides the ranking (not ``top_k`` or the cursor)."""
    fields = body.model_dump(mode="json", include={"query", "collection", "video_ids", "per_video_k", "nms_iou",
                                                   "min_score"})
    return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def scope(body: CollectionSearchRequest, store: TenantStore) -> list[str]:
    """The video ids in scope: the collection's (insertion order; 404 when unknown) or the given ids (deduplicated)."""
    if body.collection is not None:
        return await Collections(store).members(body.collection)
    assert body.video_ids is not None
    return list(dict.fromkeys(body.video_ids))


async def search_video(runtime: Runtime, body: CollectionSearchRequest, store: TenantStore, text: np.ndarray,
                       video_id: str) -> np.ndarray | None:
    """One video's ranked moments (K, 3) ``[start, end, score]`` as /v1/moments gives them; None when it is gone."""
    assert runtime.batcher is not None and runtime.bundle is not None
    try:
        with runtime.batcher.preparing():  # the batcher may wait a moment for this video's rows
            video = await store.video_input(video_id)
    except NotFound:
        await store.forget_if_gone(video_id, "search")
        return None
    plan = runtime.window_plan(len(video))
    rows = await runtime.batcher.infer_windows([text], video, plan, tef=runtime.bundle.pre.tef_offsets,
                                               timeout_s=time_left(runtime.settings.request_timeout_s))
    return merge_moments(rows[0], plan, clip_length_s=runtime.bundle.pre.clip_length_s,
                         rule=runtime.settings.moment_merge, top_k=body.per_video_k, nms_iou=body.nms_iou,
                         min_score=body.min_score or 0.0)


async def run_stage2(runtime: Runtime, body: CollectionSearchRequest, store: TenantStore, text: np.ndarray,
                     candidates: list[str]) -> tuple[list[tuple[str, float, float, float]], int]:
    """TR-DETR on every candidate, at most ``TRDETR_MAX_BATCH_SIZE`` videos in flight; (ranked hits, videos found)."""
    limit = asyncio.Semaphore(runtime.settings.max_batch_size)

    async def one(video_id: str) -> np.ndarray | None:
        async with limit:
            return await search_video(runtime, body, store, text, video_id)

    assert runtime.batcher is not None
    tasks = [asyncio.ensure_future(one(video_id)) for video_id in candidates]
    try:
        answers = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:  # one video failed (504, 429, Redis down) or the client left: stop the others
            task.cancel()
        raise
    hits = [(video_id, float(s), float(e), float(p))
            for order, (video_id, ranked) in enumerate(zip(candidates, answers, strict=True)) if ranked is not None
            for s, e, p in ranked]
    order = {video_id: i for i, video_id in enumerate(candidates)}
    hits.sort(key=lambda hit: (-hit[3], order[hit[0]], hit[1]))
    return hits[:MAX_RANKED], sum(answer is not None for answer in answers)


async def encode_query(runtime: Runtime, query: QueryIn) -> tuple[np.ndarray, np.ndarray | None]:
    """The query's token features (L, text_dim) and, for a text query on a bundle that has it, its CLIP
    projected text embedding (P,) for stage 1 (None otherwise)."""
    if query.text is None or runtime.text is None:
        return (await _encode_queries(runtime, [query]))[0], None
    encoded = (await runtime.text.encode_texts([query.text]))[0]
    return encoded.tokens, encoded.embed


async def pick_candidates(runtime: Runtime, store: TenantStore, ids: list[str],
                          embed: np.ndarray | None) -> tuple[list[str], str, list[str]]:
    """Stage 1 over the scope ``ids``: (candidates, how they were picked, notes)."""
    settings = runtime.settings
    if len(ids) > settings.search_candidates and embed is not None and runtime.stage1 is not None:
        index = await runtime.stage1.synced(store)
        picked = index.top(embed, ids, settings.search_candidates)
        notes = []
        if len(picked) < settings.search_candidates:  # videos without a summary fill the slots left, in order
            chosen = set(picked)
            unsummarised = [video_id for video_id in ids if video_id not in index.keys and video_id not in chosen]
            picked += unsummarised[:settings.search_candidates - len(picked)]
            if unsummarised:
                notes.append(f"{len(unsummarised)} videos in scope have no stage-1 summary (stored before this "
                             "service kept them); they were searched only to fill free candidate slots. Store them "
                             "again to index them.")
        return picked, "index", notes
    if len(ids) <= settings.search_exhaustive_limit:
        return ids, "none", []
    why = ("the query was given as token features, which carry no CLIP text embedding; send it as text"
           if embed is None and runtime.stage1 is not None else
           "this bundle's text encoder has no CLIP text embedding output (re-export it with trdetr-export "
           "--clip to get text_embeds)")
    candidates = ids[:settings.search_exhaustive_limit]
    return candidates, "exhaustive_limit", [
        f"Only the first {len(candidates)} of {len(ids)} videos (in the order they were stored) were searched "
        f"(TRDETR_SEARCH_EXHAUSTIVE_LIMIT): stage-1 candidate selection needs the query's CLIP text embedding, and "
        f"{why}."]


async def rank(runtime: Runtime, body: CollectionSearchRequest, store: TenantStore) -> Ranking:
    """Stage 1 (when the scope is larger than ``TRDETR_SEARCH_CANDIDATES``) then stage 2 on the candidates."""
    assert runtime.bundle is not None
    query = body.query_object()
    check_query_limits(runtime, [query])
    ids, (text, embed) = await asyncio.gather(scope(body, store), encode_query(runtime, query))
    candidates, stage1, notes = await pick_candidates(runtime, store, ids, embed)
    hits, found = await run_stage2(runtime, body, store, text, candidates)
    searched = len(ids) - (len(candidates) - found)  # candidates found gone (expired, deleted) are not counted
    return Ranking(hits, searched, found, stage1, notes)


async def search(runtime: Runtime, body: CollectionSearchRequest, store: TenantStore) -> CollectionSearchResponse:
    """The page of results the request asks for (the first, or the one its cursor names)."""
    if body.cursor is not None:
        ranking, token, offset = await _resume(runtime, body, store)
    else:
        ranking, token, offset = await rank(runtime, body, store), uuid.uuid4().hex, 0
        if len(ranking.hits) > body.top_k:
            await _keep(runtime, body, store, ranking, token)
    end = offset + body.top_k
    page = [SearchHit(video_id=v, start=s, end=e, score=p) for v, s, e, p in ranking.hits[offset:end]]
    return CollectionSearchResponse(
        results=page, next_cursor=f"s1.{token}.{end}" if end < len(ranking.hits) else None,
        searched_videos=ranking.searched_videos, candidate_videos=ranking.candidate_videos,
        stage1=ranking.stage1, notes=ranking.notes)  # type: ignore[arg-type]


async def _keep(runtime: Runtime, body: CollectionSearchRequest, store: TenantStore, ranking: Ranking,
                token: str) -> None:
    state = {"fingerprint": fingerprint(body), "hits": ranking.hits, "searched": ranking.searched_videos,
             "candidates": ranking.candidate_videos, "stage1": ranking.stage1, "notes": ranking.notes}
    await store.store.redis("search", store.store.client.set(
        store.keys.search_results(token), orjson.dumps(state), ex=runtime.settings.search_cursor_ttl_s))


async def _resume(runtime: Runtime, body: CollectionSearchRequest, store: TenantStore) -> tuple[Ranking, str, int]:
    assert body.cursor is not None
    match = _CURSOR.match(body.cursor)
    if match is None:
        raise InvalidInput("The cursor is not one this service returned; send the next_cursor of the previous page "
                           "unchanged, or leave it out to search again.", code="invalid_cursor")
    token, offset = match.group(1), int(match.group(2))
    raw = await store.store.redis("search", store.store.client.get(store.keys.search_results(token)))
    if raw is None:
        raise InvalidInput(f"This search's results have expired (they are kept {runtime.settings.search_cursor_ttl_s} "
                           "s, TRDETR_SEARCH_CURSOR_TTL_S); search again without a cursor.", code="cursor_expired")
    state = orjson.loads(raw)
    if state["fingerprint"] != fingerprint(body):
        raise InvalidInput("The cursor belongs to another search: send the same query, scope, per_video_k, nms_iou "
                           "and min_score as the first page.", code="invalid_cursor")
    hits = [tuple(hit) for hit in state["hits"]]
    return Ranking(hits, state["searched"], state["candidates"], state["stage1"], state["notes"]), token, offset  # type: ignore[arg-type]
