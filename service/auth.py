"""API-key check (header ``X-API-Key``), active only when ``TRDETR_API_KEYS`` is set; it names the tenant."""

from __future__ import annotations

import hmac

from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from service.errors import ServiceError
from service.tenancy import SHARED_TENANT, Tenant, tenant_for_key

API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="Needed when API keys are configured.")


def check_api_key(keys: list[str], key: str | None) -> Tenant:
    """The key's tenant; 401 without a key, 403 with a wrong one; the shared tenant when no keys are set."""
    if not keys:
        return SHARED_TENANT
    if not key:
        raise ServiceError(401, "missing_api_key", "This service needs an API key: send it in the X-API-Key header.",
                           headers={"WWW-Authenticate": "APIKey"})
    if not any(hmac.compare_digest(key.encode(), allowed.encode()) for allowed in keys):
        raise ServiceError(403, "invalid_api_key", "The X-API-Key is not valid for this service.")
    return tenant_for_key(key)


async def require_api_key(request: Request, key: str | None = Security(API_KEY_HEADER)) -> Tenant:
    """FastAPI dependency: the request's tenant (see :func:`check_api_key`)."""
    return check_api_key(request.app.state.runtime.settings.api_keys, key)
