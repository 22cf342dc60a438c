"""The whole-request deadline (``TRDETR_REQUEST_TIMEOUT_S``), enforced in the ASGI layer.

Every HTTP request gets one deadline when it arrives. It covers receiving the body (uvicorn's
``timeout_keep_alive`` only covers idle connections, so a client sending its body one byte at a time --
slowloris -- would otherwise hold a connection and a task forever), the Redis calls, waiting for a
decode or text-encoding thread, the inference queue and the run itself. When it passes:

- the body had not arrived in full: 408 ``body_timeout`` with ``Connection: close`` (the server drops
  the connection, so the client cannot keep it open);
- otherwise: 504 ``deadline_exceeded``.

Video uploads (``PUT /v1/videos/{id}/video``, up to ``TRDETR_MAX_VIDEO_BYTES``) are exempt: a 2 GiB file
takes minutes on a good link. They are streamed to disk with their own guards instead (an idle timeout
and a minimum average rate, :mod:`service.body_to_file`), and answer as soon as the job is queued.

The work in progress is cancelled (a job still queued for inference is skipped; a thread already
decoding a file finishes, its result unused). Code below the middleware reads the time left with
:func:`time_left`, e.g. to refuse inference it could not finish in time.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_response
from service.metrics import Metrics

log = logging.getLogger(__name__)

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("trdetr_request_deadline", default=None)


def time_left(default_s: float) -> float:
    """Seconds left before this request's deadline (``default_s`` outside a request)."""
    deadline = _DEADLINE.get()
    return default_s if deadline is None else max(0.0, deadline - time.monotonic())


def _has_body(scope: Scope) -> bool:
    headers = dict(scope["headers"])
    length = headers.get(b"content-length")
    return (length is not None and length.strip() not in (b"", b"0")) or b"transfer-encoding" in headers


class DeadlineMiddleware:
    """Cancel a request at its deadline and answer 408 (body still arriving) or 504 (anything else)."""

    def __init__(self, app: ASGIApp, *, timeout_s: float, metrics: Metrics,
                 exempt_put: re.Pattern[str] | None = None) -> None:
        """``exempt_put``: PUT paths that get no deadline (video uploads, guarded by their own timeouts)."""
        self.app = app
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.exempt_put = exempt_put

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (
                self.exempt_put is not None and scope["method"] == "PUT" and self.exempt_put.match(scope["path"])):
            await self.app(scope, receive, send)
            return
        body_pending = _has_body(scope)
        response_started = False

        async def tracking_receive() -> Message:
            nonlocal body_pending
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_pending = False
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        token = _DEADLINE.set(time.monotonic() + self.timeout_s)
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.app(scope, tracking_receive, tracking_send)
        except TimeoutError:
            if response_started:
                log.warning("%s %s passed its deadline while responding", scope["method"], scope["path"])
                return
            await self._expired(scope, receive, send, body_pending)
        finally:
            _DEADLINE.reset(token)

    async def _expired(self, scope: Scope, receive: Receive, send: Send, body_pending: bool) -> None:
        seconds = f"{self.timeout_s:g}"
        if body_pending:
            code, status, headers = "body_timeout", 408, {"Connection": "close"}
            message = (f"The request body did not arrive within {seconds} s (TRDETR_REQUEST_TIMEOUT_S); the "
                       "connection is closed. Send the whole body promptly.")
        else:
            code, status, headers = "deadline_exceeded", 504, {}
            message = (f"The request did not finish within {seconds} s (TRDETR_REQUEST_TIMEOUT_S); the service "
                       "is overloaded. Retry later or send fewer queries per request.")
        self.metrics.rejected.labels(code).inc()
        response = error_response(status, code, message, {"timeout_s": self.timeout_s}, headers,
                                  path=scope["path"])
        await response(scope, receive, send)
