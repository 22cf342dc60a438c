"""Pure-ASGI middleware: request-body size limit (413) and per-route Prometheus metrics."""

from __future__ import annotations

import re
from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_response
from service.metrics import Metrics
from service.timing import start_request

VIDEO_UPLOAD_PATH = re.compile(r"^/v1/videos/[^/]+/video$")
"""``PUT`` here uploads a video file (streamed to disk, never held in memory): ``TRDETR_MAX_VIDEO_BYTES``."""
KSERVE_INFER_PATH = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$")
"""``POST`` here carries raw model tensors (a batch of full videos): ``TRDETR_MAX_BODY_BYTES``."""
UPLOAD_PATH_PREFIX = "/v1/videos/"
"""``PUT`` requests under this path upload files and get ``TRDETR_MAX_BODY_BYTES``; every other body
(JSON) gets the smaller ``TRDETR_MAX_JSON_BODY_BYTES``."""


def _too_large_message(limit: int, setting: str) -> str:
    return f"The request body is larger than the {limit} bytes allowed ({setting})."


class BodyLimitMiddleware:
    """Refuse bodies over their limit: at once from Content-Length, else while streaming.

    Video uploads (``PUT /v1/videos/{id}/video``, streamed to disk) may be up to ``max_video_bytes``;
    other uploads (``PUT /v1/videos/...``) and KServe v2 tensors (``POST /v2/models/{name}/infer``) up to
    ``max_upload_bytes``; any other body (JSON) up to
    ``max_json_bytes``, so a search request can never be as large as a feature file.
    """

    def __init__(self, app: ASGIApp, *, max_upload_bytes: int, max_json_bytes: int, metrics: Metrics,
                 max_video_bytes: int | None = None) -> None:
        self.app = app
        self.max_upload_bytes = max_upload_bytes
        self.max_json_bytes = max_json_bytes
        self.max_video_bytes = max_video_bytes if max_video_bytes is not None else max_upload_bytes
        self.metrics = metrics

    def _limit(self, scope: Scope) -> tuple[int, str]:
        if scope["method"] == "PUT" and VIDEO_UPLOAD_PATH.match(scope["path"]):
            return self.max_video_bytes, "TRDETR_MAX_VIDEO_BYTES"
        if (scope["method"] == "PUT" and scope["path"].startswith(UPLOAD_PATH_PREFIX)) or (
                scope["method"] == "POST" and KSERVE_INFER_PATH.match(scope["path"])):
            return self.max_upload_bytes, "TRDETR_MAX_BODY_BYTES"
        return self.max_json_bytes, "TRDETR_MAX_JSON_BODY_BYTES"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = self._limit(scope)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            self.metrics.rejected.labels("payload_too_large").inc()
            response = error_response(413, "payload_too_large", _too_large_message(limit, setting),
                                      {"max_body_bytes": limit, "setting": setting}, {"Connection": "close"},
                                      path=scope["path"])
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, _too_large_message(limit, setting))  # counted by the handler
            return message

        await self.app(scope, limited_receive, send)


class MetricsMiddleware:
    """Count requests by route template, method and status, and time them; for requests that ran the model,
    the ``Server-Timing`` header and the in-app overhead (:mod:`service.timing`)."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # (route, method, status) -> its counter and histogram children: ``labels()`` takes a lock and builds
        # the label tuple on every call. Bounded: routes are templates (or ``<unmatched>``).
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def _observe(self, template: str, method: str, status: int, seconds: float) -> None:
        key = (template, method, status)
        children = self._children.get(key)
        if children is None:
            children = (self.metrics.requests.labels(template, method, str(status)),
                        self.metrics.latency.labels(template, method))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        timing = start_request()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if timing.model_runs:
                    message["headers"] = [*message.get("headers", []), (b"server-timing", timing.server_timing())]
                    self.metrics.overhead.observe(timing.overhead_s())
            await send(message)

        try:
            await self.app(scope, timing.receive(receive), send_with_status)
        finally:
            route = scope.get("route")
            self._observe(getattr(route, "path", None) or "<unmatched>", scope["method"], status, timing.elapsed_s())
