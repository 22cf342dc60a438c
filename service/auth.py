"""API-key check (header ``X-API-Key``), active only when ``TRDETR_API_KEYS`` is set."""

from __future__ import annotations

import hmac

from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from service.errors import ServiceError

API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="Needed when API keys are configured.")


async def require_api_key(request: Request, key: str | None = Security(API_KEY_HEADER)) -> None:
    """401 without a key, 403 with a wrong one; a no-op when no keys are configured."""
    runtime = request.app.state.runtime
    keys: list[str] = runtime.settings.api_keys
    if not keys:
        return
    if not key:
        raise ServiceError(401, "missing_api_key", "This service needs an API key: send it in the X-API-Key header.",
                           headers={"WWW-Authenticate": "APIKey"})
    if not any(hmac.compare_digest(key.encode(), allowed.encode()) for allowed in keys):
        raise ServiceError(403, "invalid_api_key", "The X-API-Key is not valid for this service.")
