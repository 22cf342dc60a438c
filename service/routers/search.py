"""``POST /v1/moments`` and ``POST /v1/highlights``: run queries against one video."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from service.cache import TenantStore
from service.deadline import time_left
from service.dependencies import Runtime, SearchContextDep
from service.inference.batcher import RowOutput
from service.inputs import SearchInputs, precheck_search_body, resolve_inputs, search_body_max_values
from service.json_body import json_route
from service.schemas import (
    ClipScore,
    HighlightsRequest,
    HighlightsResponse,
    Moment,
    MomentsRequest,
    MomentsResponse,
    QueryHighlights,
    QueryMoments,
    SearchRequest,
    Windowing,
    error_responses,
)
from trdetr_common.postprocess import clip_saliency, top_clips
from trdetr_common.windows import WindowPlan, merge_moments, merge_saliency

# The API key is checked by SearchContextDep (one dependency per route: FastAPI's resolution is per-request work).
router = APIRouter(prefix="/v1", tags=["search"], route_class=json_route(precheck_search_body, search_body_max_values))

_ERRORS = error_responses(401, 403, 404, 413, 422, 429, 503, 504)


def _json(model: BaseModel) -> Response:
    """``model`` as JSON in one pydantic-core call.

    Returning a ``Response`` skips FastAPI's second pass over an already valid model (re-validation,
    ``jsonable_encoder``, ``json.dumps``); the route's ``response_model`` still documents the shape.
    """
    return Response(model.model_dump_json(), media_type="application/json")


async def _infer(runtime: Runtime, request: SearchRequest,
                 store: TenantStore) -> tuple[SearchInputs, WindowPlan, list[list[RowOutput]]]:
    """Resolve the inputs and run every window of every query of the request as rows of one batch job.

    Returns the inputs, the video's window plan and, per query, one model answer per window.
    """
    assert runtime.batcher is not None and runtime.bundle is not None
    with runtime.batcher.preparing():
        inputs = await resolve_inputs(runtime, request, store)
    plan = runtime.window_plan(inputs.num_clips)
    rows = await runtime.batcher.infer_windows(inputs.texts, inputs.video, plan, tef=runtime.bundle.pre.tef_offsets,
                                               timeout_s=time_left(runtime.settings.request_timeout_s))
    return inputs, plan, rows


async def _respond(build: Callable[[], BaseModel], plan: WindowPlan) -> Response:
    """The JSON response: built on the event loop for one window (cheap, as before), in a worker thread for a
    long video (merging thousands of candidates and clips would stall the loop)."""
    if plan.num_windows == 1:
        return _json(build())
    return await run_in_threadpool(lambda: _json(build()))


def _windowing(plan: WindowPlan, merge: str) -> Windowing:
    return Windowing(window_clips=plan.window, stride_clips=plan.stride, num_windows=plan.num_windows,
                     merge=merge if plan.num_windows > 1 else "none")


@router.post("/moments", response_model=MomentsResponse, responses=_ERRORS, summary="Moment retrieval")
async def moments(body: MomentsRequest, context: SearchContextDep) -> Response:
    """Ranked moments `{start, end, score}` per query, best first.

    `score` is the foreground probability of the moment (softmax over the model's two class
    logits), 0-1. Times are in seconds, clamped to the video and rounded to whole clips as the
    official post-processing does; `nms_iou` removes moments overlapping a better one by more than
    that IoU, `min_score` drops weak ones, `top_k` caps the list. A video longer than the model's
    window is searched on overlapping windows whose moments are merged (`windowing` says how).
    """
    runtime = context.runtime
    inputs, plan, rows = await _infer(runtime, body, context.store)
    return await _respond(lambda: _moments(runtime, body, inputs, plan, rows), plan)


def _moments(runtime: Runtime, body: MomentsRequest, inputs: SearchInputs, plan: WindowPlan,
             rows: list[list[RowOutput]]) -> MomentsResponse:
    assert runtime.bundle is not None
    clip_length = runtime.bundle.pre.clip_length_s
    rule = runtime.settings.moment_merge
    results = []
    for index, (text, windows) in enumerate(zip(inputs.query_texts, rows, strict=True)):
        ranked = merge_moments(windows, plan, clip_length_s=clip_length, rule=rule, top_k=body.top_k,
                               nms_iou=body.nms_iou, min_score=body.min_score or 0.0)
        moments_ = [Moment(start=float(s), end=float(e), score=float(p)) for s, e, p in ranked]
        results.append(QueryMoments(query_index=index, text=text, moments=moments_))
    return MomentsResponse(video_id=inputs.video_id, num_clips=inputs.num_clips,
                           duration_s=inputs.num_clips * clip_length, windowing=_windowing(plan, rule),
                           results=results)


@router.post("/highlights", response_model=HighlightsResponse, responses=_ERRORS, summary="Highlight detection")
async def highlights(body: HighlightsRequest, context: SearchContextDep) -> Response:
    """Per query, the saliency of every clip and the `top_k` highlight clips.

    `raw` is the model's saliency score: an unbounded logit-like value that is often negative.
    Only its order within one video and query is meaningful (it is not a probability, and raw
    values are not comparable across videos or queries). `normalized` rescales it to 0-1 within
    this video and query: `(raw - min) / (max - min)`, 1 for the most salient clip, 0 for the
    least; a video whose clips all score the same gets 1 everywhere. On a video longer than the
    model's window a clip's `raw` is the mean over the overlapping windows that contain it.
    """
    runtime = context.runtime
    inputs, plan, rows = await _infer(runtime, body, context.store)
    return await _respond(lambda: _highlights(runtime, body, inputs, plan, rows), plan)


def _highlights(runtime: Runtime, body: HighlightsRequest, inputs: SearchInputs, plan: WindowPlan,
                rows: list[list[RowOutput]]) -> HighlightsResponse:
    assert runtime.bundle is not None
    clip_length = runtime.bundle.pre.clip_length_s
    results = []
    for index, (text, windows) in enumerate(zip(inputs.query_texts, rows, strict=True)):
        scores = clip_saliency(merge_saliency([w.saliency for w in windows], plan), clip_length)
        clips = [
            ClipScore(clip=i, start=float(scores.start_s[i]), end=float(scores.end_s[i]),
                      raw=float(scores.raw[i]), normalized=float(scores.normalized[i]))
            for i in range(inputs.num_clips)
        ]
        best = [clips[int(i)] for i in top_clips(scores.raw, body.top_k)]
        results.append(QueryHighlights(query_index=index, text=text, clips=clips, top_clips=best))
    return HighlightsResponse(video_id=inputs.video_id, num_clips=inputs.num_clips,
                              duration_s=inputs.num_clips * clip_length, windowing=_windowing(plan, "mean"),
                              results=results)
