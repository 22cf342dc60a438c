"""API-key check (header ``X-API-Key``), active only when ``TRDETR_API_KEYS`` is set.

The dependency returns the key's **id**: a one-way hash of the key (``k`` + 20 hex digits), stable
across replicas and restarts and safe to store, log and show (it never reveals the key; keys must be
random and long, e.g. ``openssl rand -hex 32``), or ``shared`` when no keys are configured. Ingestion
jobs record the id of the key that created them, and only that key may read them.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from service.errors import ServiceError

API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="Needed when API keys are configured.")
SHARED_KEY_ID = "shared"
_DOMAIN = b"trdetr-tenant-v1\0"  # separates this hash from any other use of the same key


def api_key_id(key: str) -> str:
    """The non-secret id of an API key: ``k`` + the first 80 bits of SHA-256(domain || key), in hex."""
    return "k" + hashlib.sha256(_DOMAIN + key.encode()).hexdigest()[:20]


async def require_api_key(request: Request, key: str | None = Security(API_KEY_HEADER)) -> str:
    """401 without a key, 403 with a wrong one; returns the key's id (``shared`` when no keys are configured)."""
    runtime = request.app.state.runtime
    keys: list[str] = runtime.settings.api_keys
    if not keys:
        return SHARED_KEY_ID
    if not key:
        raise ServiceError(401, "missing_api_key", "This service needs an API key: send it in the X-API-Key header.",
                           headers={"WWW-Authenticate": "APIKey"})
    if not any(hmac.compare_digest(key.encode(), allowed.encode()) for allowed in keys):
        raise ServiceError(403, "invalid_api_key", "The X-API-Key is not valid for this service.")
    return api_key_id(key)


KeyIdDep = Annotated[str, Depends(require_api_key)]
"""The request's API key id (routes that record or check who owns what)."""
