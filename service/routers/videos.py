"""``/v1/videos/{video_id}``: upload, inspect and delete cached per-clip video features."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request

from service.auth import require_api_key
from service.collections import Collections, check_names
from service.dependencies import ReadyRuntimeDep, Runtime, TenantStoreDep
from service.schemas import (
    COLLECTION_PATTERN,
    VIDEO_ID_PATTERN,
    Deleted,
    VideoInfo,
    VideoList,
    error_responses,
)
from service.uploads import NPY_TYPES, NPZ_TYPES, file_format, parse_video, video_meta

router = APIRouter(prefix="/v1/videos", tags=["videos"], dependencies=[Depends(require_api_key)])

VideoId = Annotated[str, Path(pattern=VIDEO_ID_PATTERN, description="Your id for the video.",
                              examples=["RoripwjYFp8_60.0_210.0"])]

CollectionParams = Annotated[list[str], Query(
    alias="collection", description="Add the video to this collection (created when new); repeatable.")]
MAX_PAGE = 1000

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "description": "The raw bytes of a .npy (T, D) file in the manifest's full layout without TEF, or of "
        "a .npz with one (T_g, d_g) array per feature group named as in the manifest (e.g. 'slowfast', "
        "'clip'; audio bundles also their audio groups, e.g. 'pann'). float16 or float32.",
        "content": {mime: _BINARY for mime in (*NPY_TYPES, *NPZ_TYPES, "application/octet-stream")},
    }
}


def _video_info(runtime: Runtime, video_id: str, meta: dict[str, Any]) -> VideoInfo:
    assert runtime.bundle is not None
    pre = runtime.bundle.pre
    return VideoInfo(
        video_id=video_id, num_clips=meta["num_clips"], duration_s=meta["num_clips"] * pre.clip_length_s,
        clip_length_s=pre.clip_length_s, dim=meta["dim"], groups={g.name: g.dim for g in pre.feature_groups},
        storage_dtype=meta["storage_dtype"], ttl_s=meta["ttl_s"], expires_at=time.time() + meta["ttl_s"],
        notes=meta.get("notes", []), collections=meta.get("collections", []),
    )


@router.put("/{video_id}/features", response_model=VideoInfo, openapi_extra=_UPLOAD_BODY,
            summary="Store one video's clip features",
            responses=error_responses(401, 403, 413, 415, 422, 503))
async def put_features(video_id: VideoId, request: Request, runtime: ReadyRuntimeDep,
                       store: TenantStoreDep, collection: CollectionParams = []) -> VideoInfo:  # noqa: B006
    """Validate, normalise (as the manifest says) and store the features with a TTL.

    Storing the same id again replaces the old features atomically. Groups of different lengths
    are cut to the shortest, as the official dataset does, and the response's `notes` say so.
    Features are kept as float16 (`storage_dtype`). `?collection=NAME` (repeatable) adds the video to those
    collections; collections it was already in are kept.
    """
    assert runtime.bundle is not None
    names = check_names(collection)
    body = await request.body()
    fmt = file_format(request.headers.get("content-type"), body)
    parsed = await runtime.workers.decode_file(
        parse_video, body, fmt, runtime.bundle.pre,
        max_clips=runtime.max_clips, max_unpacked_bytes=4 * runtime.settings.max_body_bytes,
    )
    stored = await store.put(video_id, parsed.features, video_meta(parsed), names)
    return _video_info(runtime, video_id, stored)


@router.get("", response_model=VideoList, summary="List stored videos (all, or one collection's)",
            responses=error_responses(401, 403, 404, 422, 503))
async def list_videos(
    runtime: ReadyRuntimeDep, store: TenantStoreDep,
    collection: Annotated[str | None, Query(pattern=COLLECTION_PATTERN, description="Only this collection's.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Most videos in this page.")] = 100,
    cursor: Annotated[str | None, Query(max_length=200, description="next_cursor of the previous page.")] = None,
) -> VideoList:
    """Your stored videos in the order they were first stored (a replaced video keeps its place), with their
    metadata. Pages are stable under concurrent writes: a video stored throughout appears exactly once across
    the pages; videos stored meanwhile come at the end, deleted or expired ones drop out.
    """
    page = await Collections(store).page(collection, limit, cursor)
    return VideoList(videos=[_video_info(runtime, v.video_id, v.meta) for v in page.videos],
                     next_cursor=page.next_cursor)


@router.get("/{video_id}", response_model=VideoInfo, summary="Stored video metadata and TTL left",
            responses=error_responses(401, 403, 404, 422, 503))
async def get_video(video_id: VideoId, runtime: ReadyRuntimeDep, store: TenantStoreDep) -> VideoInfo:
    return _video_info(runtime, video_id, await store.metadata(video_id))


@router.delete("/{video_id}", response_model=Deleted, summary="Delete a stored video",
               responses=error_responses(401, 403, 404, 422, 503))
async def delete_video(video_id: VideoId, store: TenantStoreDep) -> Deleted:
    await store.delete(video_id)
    return Deleted(video_id=video_id)
