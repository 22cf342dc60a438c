"""``/v1/collections``: named groups of a tenant's stored videos (see :mod:`service.collections`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from service.auth import require_api_key
from service.collections import Collections
from service.dependencies import TenantStoreDep
from service.routers.videos import VideoId
from service.schemas import (
    COLLECTION_PATTERN,
    CollectionDeleted,
    CollectionInfo,
    CollectionList,
    CollectionMember,
    error_responses,
)

router = APIRouter(prefix="/v1/collections", tags=["collections"], dependencies=[Depends(require_api_key)])

CollectionName = Annotated[str, Path(pattern=COLLECTION_PATTERN, description="The collection's name.",
                                     examples=["cooking-shows"])]


@router.get("", response_model=CollectionList, summary="Your collections and their sizes",
            responses=error_responses(401, 403, 503))
async def list_collections(store: TenantStoreDep) -> CollectionList:
    sizes = await Collections(store).names_and_sizes()
    return CollectionList(collections=[CollectionInfo(name=name, videos=count) for name, count in sizes.items()])


@router.delete("/{name}", response_model=CollectionDeleted, summary="Delete a collection (not its videos)",
               responses=error_responses(401, 403, 404, 422, 503))
async def delete_collection(name: CollectionName, store: TenantStoreDep) -> CollectionDeleted:
    await Collections(store).drop(name)
    return CollectionDeleted(collection=name)


@router.put("/{name}/videos/{video_id}", response_model=CollectionMember,
            summary="Add a stored video to a collection (created when new)",
            responses=error_responses(401, 403, 404, 422, 503))
async def add_video(name: CollectionName, video_id: VideoId, store: TenantStoreDep) -> CollectionMember:
    """Adding a video that is already in the collection changes nothing."""
    await Collections(store).add(name, video_id)
    return CollectionMember(collection=name, video_id=video_id, member=True)


@router.delete("/{name}/videos/{video_id}", response_model=CollectionMember,
               summary="Take a video out of a collection (the video stays stored)",
               responses=error_responses(401, 403, 404, 422, 503))
async def remove_video(name: CollectionName, video_id: VideoId, store: TenantStoreDep) -> CollectionMember:
    await Collections(store).remove(name, video_id)
    return CollectionMember(collection=name, video_id=video_id, member=False)
