"""Connection-level limits uvicorn does not have: a request-head deadline and a connection cap.

uvicorn arms no timer while a request's line and headers arrive, so a client that sends a header byte now and
then (slowloris) holds a connection, its buffers and a file descriptor for ever; the whole-request deadline
(``TRDETR_REQUEST_TIMEOUT_S``) starts only once the headers are complete and the app sees the request. Its own
``--limit-concurrency`` answers plain text and counts running tasks too. This protocol, a subclass of uvicorn's
httptools protocol (what ``uvicorn[standard]`` runs), adds both at the connection:

- **head deadline**: from a connection's opening, and again after each response on a kept-alive connection, the
  next request's head must be complete within ``header_timeout_s``; else the server answers ``408
  header_timeout`` and closes the connection.
- **connection cap**: a connection beyond ``max_connections`` open ones gets ``503 too_many_connections`` (the
  project's JSON error body, ``Retry-After``) and is closed before anything is read from it.

Both answers are written straight to the socket: they happen before or outside any ASGI request.
"""

from __future__ import annotations

import asyncio

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.errors import error_body


def raw_error_response(status: int, reason: str, code: str, message: str, retry_after_s: int | None = None) -> bytes:
    """A complete HTTP/1.1 response with the project's JSON error body, closing the connection."""
    body = orjson.dumps(error_body(code, message))
    head = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(body)}",
            "connection: close"]
    if retry_after_s is not None:
        head.append(f"retry-after: {retry_after_s}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a request-head deadline and a cap on open connections."""

    header_timeout_s: float = 10.0
    max_connections: int = 1000

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refuse(raw_error_response(
                503, "Service Unavailable", "too_many_connections",
                f"this server process holds its maximum of {self.max_connections} open connections "
                "(TRDETR_MAX_CONNECTIONS); retry shortly or reuse a kept-alive connection", retry_after_s=1))
            return
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        self._cancel_head_deadline()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)  # a pipelined request's head was already read in full
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            self._arm_head_deadline()

    def _arm_head_deadline(self) -> None:
        self._cancel_head_deadline()
        self._head_deadline = self.loop.call_later(self.header_timeout_s, self._head_deadline_passed)

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_deadline_passed(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing():
            return
        self._refuse(raw_error_response(
            408, "Request Timeout", "header_timeout",
            f"the request line and headers did not arrive within {self.header_timeout_s:g} s "
            "(TRDETR_HEADER_TIMEOUT_S); send the whole request head at once"))

    def _refuse(self, response: bytes) -> None:
        self._cancel_head_deadline()
        self.transport.write(response)
        self.transport.close()


def limited_protocol(header_timeout_s: float, max_connections: int) -> type[LimitedHttpToolsProtocol]:
    """The protocol class for ``uvicorn.run(http=...)`` with these limits."""
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,),
                {"header_timeout_s": header_timeout_s, "max_connections": max_connections})
