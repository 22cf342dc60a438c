"""Operational endpoints: liveness, readiness, Prometheus metrics and the model summary."""

from __future__ import annotations

from pathlib import PurePath

from fastapi import APIRouter, Depends, Response

from service.auth import require_api_key
from service.cache import layout_version
from service.dependencies import ReadyRuntimeDep, RuntimeDep
from service.schemas import Health, ModelInfo, error_responses

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process serves HTTP")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    summary="Readiness: bundle loaded, warmed up, providers active",
    responses={503: {"model": Health, "description": "Still loading or warming up"}},
)
async def readyz(runtime: RuntimeDep, response: Response) -> Health:
    """Ready once the model is loaded and warmed up (with IOBinding: every bucket run, with CUDA graphs: every
    bucket captured). Redis is reported but does not decide readiness: without it, requests with inline
    features still work."""
    checks: dict[str, str | bool | list[str]] = {"model_loaded": runtime.bundle is not None}
    if runtime.bundle is not None:
        checks["providers"] = runtime.bundle.providers
        checks["precision"] = runtime.bundle.precision
        checks["io_binding"] = runtime.bundle.bound is not None
        checks["cuda_graph"] = runtime.bundle.cuda_graph
    if runtime.store is not None:
        checks["feature_cache"] = "ok" if await runtime.store.ping() else "unreachable"
    if not runtime.ready:
        response.status_code = 503
        return Health(status="starting", checks=checks)
    return Health(status="ok", checks=checks)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
async def metrics(runtime: RuntimeDep) -> Response:
    if runtime.ingest is not None:
        await runtime.ingest.refresh_depth(runtime.metrics.ingest)
    return Response(runtime.metrics.render(), media_type=runtime.metrics.content_type)


@router.get(
    "/v1/model",
    response_model=ModelInfo,
    dependencies=[Depends(require_api_key)],
    summary="Model bundle summary and active execution providers",
    responses=error_responses(401, 403, 503),
)
async def model_info(runtime: ReadyRuntimeDep) -> ModelInfo:
    bundle = runtime.bundle
    assert bundle is not None
    manifest, pre, settings = bundle.manifest, bundle.pre, runtime.settings
    return ModelInfo(
        bundle=bundle.dir.name,
        format_version=manifest.format_version,
        created_at=manifest.created_at,
        untrained=manifest.untrained,
        source_checkpoint={
            **manifest.source.model_dump(),
            "file_name": PurePath(manifest.source.file_name).name,
        },
        precision=bundle.precision,
        model_file=bundle.model_file,
        providers=bundle.providers,
        text_encoder=bundle.text_encoder is not None,
        text_features_expected=pre.text_encoder.expected,
        feature_layout=layout_version(pre),
        video_groups={g.name: g.dim for g in pre.video_groups},
        video_input_dim=pre.video_input_dim,
        audio_groups={g.name: g.dim for g in pre.audio_groups},
        text_dim=pre.text_dim,
        clip_length_s=pre.clip_length_s,
        max_video_clips=pre.max_video_clips,
        window_stride_clips=runtime.stride_clips,
        moment_merge=settings.moment_merge,
        max_text_tokens=pre.max_text_tokens,
        num_queries=manifest.config.get("num_queries"),
        outputs=manifest.outputs,
        limits={
            "max_body_bytes": settings.max_body_bytes,
            "max_json_body_bytes": settings.max_json_body_bytes,
            "max_queries_per_request": settings.max_queries_per_request,
            "max_video_clips": runtime.max_clips,
            "max_video_s": runtime.max_clips * pre.clip_length_s,
            "max_query_chars": settings.max_query_chars,
            "max_batch_size": settings.max_batch_size,
            "request_timeout_s": settings.request_timeout_s,
            "max_video_bytes": settings.max_video_bytes,
        },
    )
