"""The per-app runtime objects and the FastAPI dependencies that hand them to routes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request, Security

from service.auth import API_KEY_HEADER, check_api_key, require_api_key
from service.cache import FeatureStore, TenantStore
from service.concurrency import WorkerPools
from service.embedded_redis import EmbeddedRedis
from service.errors import ServiceError
from service.inference.batcher import DynamicBatcher
from service.inference.bundle import ModelBundle
from service.inference.text_queries import TextQueryEncoder
from service.metrics import Metrics
from service.settings import Settings
from service.stage1 import Stage1Indexes
from service.tenancy import Tenant
from trdetr_common.manifest import PreprocessingContract
from trdetr_common.windows import WindowPlan, plan_windows, stride_for

if TYPE_CHECKING:
    from service.ingest import Ingest


def clip_limit(settings: Settings, pre: PreprocessingContract) -> int:
    """Longest accepted video in clips: ``TRDETR_MAX_VIDEO_S`` / the bundle's clip length, rounded down.

    One rule for feature uploads, video uploads and the ingestion workers (longer videos than the model's
    trained length run on overlapping windows).
    """
    return max(1, math.floor(settings.max_video_s / pre.clip_length_s + 1e-9))


@dataclass
class Runtime:
    """What the lifespan builds once per app and every request uses (``workers``: set at start-up)."""

    settings: Settings
    metrics: Metrics
    bundle: ModelBundle | None = None
    store: FeatureStore | None = None
    batcher: DynamicBatcher | None = None
    text: TextQueryEncoder | None = None
    stage1: Stage1Indexes | None = None  # None: the bundle has no text embedding (no stage-1 search)
    embedded_redis: EmbeddedRedis | None = None
    ingest: Ingest | None = None
    workers: WorkerPools = field(init=False)
    ready: bool = False
    startup_notes: list[str] = field(default_factory=list)

    @property
    def max_clips(self) -> int:
        """Longest accepted video in clips: ``TRDETR_MAX_VIDEO_S`` / the bundle's clip length, rounded down."""
        assert self.bundle is not None
        return clip_limit(self.settings, self.bundle.pre)

    @property
    def stride_clips(self) -> int:
        """Clips between the starts of the model's windows on a long video (``TRDETR_WINDOW_STRIDE``)."""
        assert self.bundle is not None
        return stride_for(self.bundle.pre.max_video_clips, self.settings.window_stride)

    def window_plan(self, num_clips: int) -> WindowPlan:
        """Where the model runs on a video of ``num_clips`` clips (one window when it fits the model)."""
        assert self.bundle is not None
        return plan_windows(num_clips, self.bundle.pre.max_video_clips, self.stride_clips)


async def get_runtime(request: Request) -> Runtime:
    """The app's runtime (async, like every dependency here: sync ones would cost a threadpool hop)."""
    return request.app.state.runtime


def ready(runtime: Runtime) -> Runtime:
    """``runtime``, or 503 while the model is still loading / warming up."""
    if not runtime.ready:
        raise ServiceError(503, "not_ready", "The model is still loading; retry in a few seconds.",
                           headers={"Retry-After": "2"})
    return runtime


async def get_ready_runtime(request: Request) -> Runtime:
    """The runtime, or 503 while the model is still loading / warming up."""
    return ready(request.app.state.runtime)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
ReadyRuntimeDep = Annotated[Runtime, Depends(get_ready_runtime)]


async def get_tenant_store(runtime: ReadyRuntimeDep,
                           tenant: Annotated[Tenant, Depends(require_api_key)]) -> TenantStore:
    """The videos of the request's tenant (its API key's; the shared tenant without keys)."""
    assert runtime.store is not None
    return runtime.store.tenant(tenant.id)


TenantStoreDep = Annotated[TenantStore, Depends(get_tenant_store)]


@dataclass(frozen=True)
class SearchContext:
    """What a search route needs: the ready runtime and the request's tenant's videos."""

    runtime: Runtime
    store: TenantStore


async def get_search_context(request: Request, key: str | None = Security(API_KEY_HEADER)) -> SearchContext:
    """The API key (401/403), then readiness (503), then the tenant's store, as one dependency.

    The same checks, in the same order, as ``require_api_key`` + ``ReadyRuntimeDep`` + ``TenantStoreDep``;
    FastAPI resolves dependencies on every request, so one instead of five is measurably cheaper.
    """
    runtime: Runtime = request.app.state.runtime
    tenant = check_api_key(runtime.settings.api_keys, key)
    ready(runtime)
    assert runtime.store is not None
    return SearchContext(runtime, runtime.store.tenant(tenant.id))


SearchContextDep = Annotated[SearchContext, Depends(get_search_context)]
