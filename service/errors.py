"""One JSON error shape for every failure: ``{"error": {"code", "message", "details"}}``.

Routes raise :class:`ServiceError` (or a subclass); FastAPI's own validation errors, Starlette's
404/405 and unexpected exceptions are converted to the same shape here, so a client never has to
parse two formats and a client mistake is never reported as a 500.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    503: "service_unavailable",
    504: "timeout",
}


class ServiceError(Exception):
    """An error with an HTTP status, a stable machine-readable ``code`` and a message saying what to fix."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}


class InvalidRequest(ServiceError):
    """422 ``invalid_request``: the request itself is malformed (not JSON, wrong content type, ...)."""

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(422, "invalid_request", message, details)


class InvalidInput(ServiceError):
    """422: the request is well-formed JSON/bytes but its content cannot be used."""

    def __init__(self, message: str, details: dict[str, Any] | None = None, code: str = "invalid_input") -> None:
        super().__init__(422, code, message, details)


class NotFound(ServiceError):
    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(404, "not_found", message, details)


class CacheUnavailable(ServiceError):
    """503: the Redis feature cache cannot be reached (requests with inline features still work)."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            503,
            "cache_unavailable",
            "The feature cache (Redis) is unreachable, so stored videos cannot be read or written right "
            "now. Retry later, or send the features inline with the request.",
            {"reason": reason},
            headers={"Retry-After": "1"},
        )


KSERVE_PATH = re.compile(r"^/v2(/health/[^/]+|/models/.*)?$")
"""Paths of the KServe v2 / Open Inference Protocol, whose clients read ``error`` as a string."""


def error_body(code: str, message: str, details: dict[str, Any] | None = None, *,
               path: str = "") -> dict[str, Any]:
    """The JSON body of every error response; ``details`` is always an object (``{}`` when there are none).

    Under ``/v2`` (KServe v2) the protocol's shape ``{"error": message}`` with ``code`` and ``details``
    beside it, so Open Inference Protocol clients (tritonclient, KServe) show the message.
    """
    if KSERVE_PATH.match(path):
        return {"error": message, "code": code, "details": details or {}}
    return {"error": {"code": code, "message": message, "details": details or {}}}


def error_response(
    status: int, code: str, message: str, details: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
    *, path: str = "",
) -> JSONResponse:
    return JSONResponse(error_body(code, message, details, path=path), status_code=status, headers=headers)


def _count_rejection(request: Request, reason: str) -> None:
    """``trdetr_rejected_requests_total{reason}``: every refused request, by its error code."""
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is not None:
        runtime.metrics.rejected.labels(reason).inc()


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    _count_rejection(request, exc.code)
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers, path=request.url.path)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    _count_rejection(request, "invalid_request")
    problems = [
        {
            "location": ".".join(str(part) for part in err.get("loc", ())),
            "problem": err.get("msg", ""),
            "type": err.get("type", ""),
        }
        for err in exc.errors()
    ]
    summary = "; ".join(f"{p['location']}: {p['problem']}" for p in problems[:5])
    return error_response(422, "invalid_request", f"The request is invalid: {summary}", {"problems": problems},
                          path=request.url.path)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app accepts on this request's path (for the ``Allow`` header).

    Starlette's own 405 names only the methods of the first route matching the path, so ``GET`` and
    ``DELETE`` of ``/v1/videos/{id}`` (two routes) were never listed together.
    """
    routes = request.app.router.routes
    return [method for method in _METHODS
            if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)]


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    code = _HTTP_CODES.get(status, "http_error")
    if status == 413:
        _count_rejection(request, code)
    message = str(exc.detail)
    headers = dict(exc.headers or {})
    if status == 404:
        message = f"No route {request.url.path}: see /docs for the endpoints."
    elif status == 405:
        methods = allowed_methods(request)
        headers["Allow"] = ", ".join([*methods, "OPTIONS"])
        if request.method == "OPTIONS":  # what this path supports: every method of every route on it
            return Response(status_code=204, headers=headers)
        message = f"Method {request.method} is not allowed on {request.url.path}; it allows {', '.join(methods)}."
    return error_response(status, code, message, None, headers, path=request.url.path)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "Internal server error; the incident was logged.",
                          path=request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through the one JSON shape."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
