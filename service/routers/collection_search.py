"""``POST /v1/search``: one query over a collection (or a list of videos), moments ranked across videos."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from service.auth import require_api_key
from service.dependencies import ReadyRuntimeDep, TenantStoreDep
from service.json_body import json_route
from service.schemas import CollectionSearchRequest, CollectionSearchResponse, error_responses
from service.search_across import collection_search_max_values, precheck_collection_search, search

router = APIRouter(prefix="/v1", tags=["search"], dependencies=[Depends(require_api_key)],
                   route_class=json_route(precheck_collection_search, collection_search_max_values))


@router.post("/search", response_model=CollectionSearchResponse,
             responses=error_responses(401, 403, 404, 413, 422, 429, 503, 504),
             summary="Search many videos: ranked moments across a collection")
async def search_videos(body: CollectionSearchRequest, runtime: ReadyRuntimeDep, store: TenantStoreDep) -> Response:
    """Moments `{video_id, start, end, score}` of one query over a collection's videos (or `video_ids`), best
    first across videos, at most `per_video_k` of one video. A video's moments and scores are what
    `POST /v1/moments` answers for it. `next_cursor` pages through the same ranking (send the same request
    with it). A scope over `TRDETR_SEARCH_CANDIDATES` videos is first narrowed to that many candidates by CLIP
    similarity of the text query to each video's CLIP image summary (`stage1: index`); when that cannot run (a
    bundle without a CLIP text embedding, or a `features_b64` query) a scope over
    `TRDETR_SEARCH_EXHAUSTIVE_LIMIT` videos is cut to its first ones and the answer says so (`stage1`, `notes`,
    `candidate_videos`). Deleted or expired videos drop out.
    """
    answer = await search(runtime, body, store)
    return Response(answer.model_dump_json(), media_type="application/json")
