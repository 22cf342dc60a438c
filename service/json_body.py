"""JSON request bodies parsed safely: off the event loop when large, strict, checked before pydantic.

FastAPI parses a JSON body with ``json.loads`` on the event loop and then lets pydantic build every
object before any route code can look at it: a 12 MB list of 3 000 000 one-character queries blocked
the loop for 15 s and took 1.8 GB before the 16-query limit was checked. Routes of a router whose
``route_class`` comes from :func:`json_route` instead:

1. refuse a non-empty body that is not declared as JSON (422, saying to send
   ``Content-Type: application/json``);
2. parse it with orjson -- in a worker thread when it is larger than :data:`INLINE_PARSE_BYTES`, so the
   loop keeps serving -- which also refuses invalid UTF-8 and nesting deeper than 1024 levels: every
   such body is a 422 ``invalid_request`` in the one error shape, never FastAPI's bare 400;
3. run the router's ``precheck`` on the parsed (plain) data, e.g. the length of a list, before
   pydantic builds a single model object.

The body's size is bounded before all this by ``TRDETR_MAX_JSON_BODY_BYTES`` (:mod:`service.middleware`).
This follows FastAPI's documented "custom Request and APIRoute class" pattern.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import anyio.to_thread
import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute

from service.errors import InvalidRequest

INLINE_PARSE_BYTES = 64 * 1024
"""Bodies up to this size are parsed on the event loop (well under a millisecond; a thread hop costs more)."""

Precheck = Callable[[Any, Request], None]
JSON_CONTENT_TYPE_HINT = "send the body as JSON with the header Content-Type: application/json"


def is_json_content_type(content_type: str | None) -> bool:
    """``application/json`` or ``application/<anything>+json`` (parameters such as charset ignored)."""
    mime = (content_type or "").split(";")[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


async def parse_json(body: bytes) -> Any:
    """``body`` parsed by orjson (in a worker thread when large); 422 ``invalid_request`` when it is not JSON."""
    try:
        if len(body) <= INLINE_PARSE_BYTES:
            return orjson.loads(body)
        return await anyio.to_thread.run_sync(orjson.loads, body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"The body is not valid JSON ({exc}); send UTF-8 JSON nested at most 1024 levels deep.",
            {"problem": str(exc), "position": exc.pos},
        ) from None


class ParsedJSONRequest(Request):
    """A request whose body was already read and parsed by :func:`parse_json` (FastAPI reads both here)."""

    def __init__(self, request: Request, raw: bytes, parsed: Any) -> None:
        super().__init__(request.scope, request.receive)
        self.raw = raw
        self.parsed = parsed

    async def body(self) -> bytes:
        return self.raw

    async def json(self) -> Any:
        return self.parsed


def json_route(precheck: Precheck | None = None) -> type[APIRoute]:
    """An ``APIRoute`` class whose JSON bodies go through :func:`parse_json` and then ``precheck``."""

    class JSONRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()
            if self.body_field is None:
                return handler

            async def parse_then_handle(request: Request) -> Response:
                body = await request.body()
                if not body:
                    return await handler(request)  # FastAPI reports the missing body
                if not is_json_content_type(request.headers.get("content-type")):
                    raise InvalidRequest(
                        f"The body is not declared as JSON (Content-Type "
                        f"'{request.headers.get('content-type', '<none>')}'): {JSON_CONTENT_TYPE_HINT}.",
                        {"content_type": request.headers.get("content-type")},
                    )
                parsed = ParsedJSONRequest(request, body, await parse_json(body))
                if precheck is not None:
                    precheck(parsed.parsed, parsed)
                return await handler(parsed)

            return parse_then_handle

    return JSONRoute
