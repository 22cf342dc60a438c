"""``PUT /v1/videos/{video_id}/video`` (a video file becomes an ingestion job) and ``GET /v1/jobs/{job_id}``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response

from ingestion.jobs import JobRecord
from service.auth import require_api_key
from service.collections import check_names
from service.dependencies import ReadyRuntimeDep, Runtime
from service.errors import NotFound
from service.ingest import VIDEO_TYPES, Ingest
from service.routers.videos import CollectionParams, VideoId
from service.routers.videos import _video_info as video_info  # the one VideoInfo builder
from service.schemas import JOB_ID_PATTERN, JobAccepted, JobErrorOut, JobStatus, VideoInfo, error_responses
from service.tenancy import Tenant

router = APIRouter(tags=["ingestion"])

JobId = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="The id PUT .../video answered with.")]
TenantDep = Annotated[Tenant, Depends(require_api_key)]

_VIDEO_BODY = {
    "requestBody": {
        "required": True,
        "description": "The video file's raw bytes (mp4, webm, mov, mkv...), streamed; at most TRDETR_MAX_VIDEO_BYTES "
        "and the duration limit (GET /v1/model: limits).",
        "content": {mime: {"schema": {"type": "string", "format": "binary"}} for mime in VIDEO_TYPES},
    }
}
_UPLOAD_ERRORS = error_responses(401, 403, 408, 409, 413, 415, 422, 429, 503)
_UPLOAD_ERRORS[413] = {**_UPLOAD_ERRORS[413], "description": "Body larger than TRDETR_MAX_VIDEO_BYTES"}


def _ingest(runtime: Runtime) -> Ingest:
    assert runtime.ingest is not None
    return runtime.ingest


@router.put("/v1/videos/{video_id}/video", status_code=202, response_model=JobAccepted, openapi_extra=_VIDEO_BODY,
            summary="Upload a video file: its features are extracted by a job", responses=_UPLOAD_ERRORS)
async def put_video(video_id: VideoId, request: Request, response: Response, runtime: ReadyRuntimeDep,
                    tenant: TenantDep, collection: CollectionParams = []) -> JobAccepted:  # noqa: B006
    """Queue the video for feature extraction and answer at once with the job to poll.

    On success the job stores the features exactly as `PUT /v1/videos/{video_id}/features` would
    (replacing the video stored under that id), adding it to the `?collection=` collections (repeatable); a
    failed job leaves it as it was.
    """
    names = check_names(collection)
    job = await _ingest(runtime).accept(request, video_id, tenant.id, runtime.max_clips, names)
    status_url = f"/v1/jobs/{job.job_id}"
    response.headers["Location"] = status_url
    return JobAccepted(job_id=job.job_id, video_id=video_id, status_url=status_url)


@router.get("/v1/jobs/{job_id}", response_model=JobStatus, summary="An ingestion job's status",
            responses=error_responses(401, 403, 404, 422, 503))
async def get_job(job_id: JobId, runtime: ReadyRuntimeDep, tenant: TenantDep) -> JobStatus:
    """Status and progress; on success `video` is the stored video (as GET /v1/videos/{video_id})."""
    job = await _ingest(runtime).job_for(job_id, tenant.id)
    return JobStatus(
        job_id=job.job_id, video_id=job.video_id, status=job.status,  # type: ignore[arg-type]
        progress=job.progress, created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
        error=JobErrorOut(**job.error) if job.error and job.status == "failed" else None,
        video=await _stored_video(runtime, job),
    )


async def _stored_video(runtime: Runtime, job: JobRecord) -> VideoInfo | None:
    """The video this job stored, while the store still holds that very version."""
    if job.status != "succeeded" or not job.result:
        return None
    assert runtime.store is not None
    try:
        meta = await runtime.store.tenant(job.tenant).metadata(job.video_id)
    except NotFound:
        return None
    if meta.get("version") != job.result.get("version"):
        return None
    return video_info(runtime, job.video_id, meta)
