"""Stream a request body into a file: never held in memory, slow clients cut off.

The size limit is the body-limit middleware's (``TRDETR_MAX_VIDEO_BYTES`` for video uploads: 413 from
Content-Length at once, or as soon as the streamed body passes it). Here: writes of about 1 MiB run
in a worker thread (the event loop never waits on the disk), a body that sends nothing for
``idle_timeout_s`` or averages less than ``min_bytes_per_s`` after its first ``idle_timeout_s`` seconds
gets a 408, and a client that disconnects leaves no file behind.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import BinaryIO

from fastapi import Request
from starlette.requests import ClientDisconnect

from service.errors import ServiceError

WRITE_BYTES = 1 << 20


def _too_slow(message: str, details: dict[str, float]) -> ServiceError:
    return ServiceError(408, "upload_too_slow", message, details, headers={"Connection": "close"})


async def body_to_file(request: Request, path: Path, *, idle_timeout_s: float, min_bytes_per_s: int) -> int:
    """Write the request body to ``path``; returns its size. The file is removed on any error."""
    handle: BinaryIO = await asyncio.to_thread(open, path, "wb")
    try:
        size = await _copy(request, handle, idle_timeout_s, min_bytes_per_s)
    except BaseException:
        await asyncio.to_thread(handle.close)
        path.unlink(missing_ok=True)
        raise
    await asyncio.to_thread(handle.close)
    return size


async def _copy(request: Request, handle: BinaryIO, idle_timeout_s: float, min_bytes_per_s: int) -> int:
    stream = request.stream().__aiter__()
    pending = bytearray()
    size = 0
    started = time.monotonic()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), timeout=idle_timeout_s)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise _too_slow(f"The upload sent nothing for {idle_timeout_s:g} s (TRDETR_UPLOAD_IDLE_TIMEOUT_S); "
                            "send the file in one go.", {"received_bytes": size}) from None
        except ClientDisconnect:
            raise ServiceError(400, "client_disconnected", "The client went away before the upload ended.") from None
        size += len(chunk)
        pending += chunk
        if len(pending) >= WRITE_BYTES:
            await asyncio.to_thread(handle.write, bytes(pending))
            pending.clear()
        elapsed = time.monotonic() - started
        if min_bytes_per_s and elapsed > idle_timeout_s and size / elapsed < min_bytes_per_s:
            raise _too_slow(f"The upload is too slow ({size / elapsed:.0f} bytes/s on average; at least "
                            f"{min_bytes_per_s} are needed, TRDETR_UPLOAD_MIN_BYTES_PER_S).",
                            {"received_bytes": size, "seconds": round(elapsed, 1)})
    if pending:
        await asyncio.to_thread(handle.write, bytes(pending))
    return size
