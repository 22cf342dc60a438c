"""Interactive API docs served offline, guarded like the API, and the OpenAPI document.

``/docs`` (Swagger UI) and ``/redoc`` load their JavaScript and CSS from this server
(``/docs-assets/...``), taken from the ``fastapi-offline`` package, a maintained wheel that ships the
Swagger UI and ReDoc bundles: FastAPI's defaults load them from a CDN, so the pages stayed blank on an
air-gapped machine. With API keys configured, ``/docs``, ``/redoc`` and ``/openapi.json`` need the
``X-API-Key`` header like the API itself, unless ``TRDETR_PUBLIC_DOCS=true`` (the static assets are
the public Swagger UI / ReDoc code and stay open). The OpenAPI document declares the API-key security
scheme only when keys are configured.
"""

from __future__ import annotations

import importlib.resources
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from service.auth import require_api_key
from service.settings import Settings

ASSETS = "/docs-assets"
OPENAPI_URL = "/openapi.json"


def _assets_dir() -> str:
    return str(importlib.resources.files("fastapi_offline") / "static")


def openapi_document(app: FastAPI, keys_configured: bool) -> dict[str, Any]:
    """The app's OpenAPI schema (built once); without API keys it declares no security scheme."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        if not keys_configured:
            schema.get("components", {}).pop("securitySchemes", None)
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.pop("security", None)
        app.openapi_schema = schema
    return app.openapi_schema


def install_docs(app: FastAPI, settings: Settings) -> None:
    """Add ``/openapi.json``, ``/docs``, ``/redoc`` and their offline assets to ``app``."""
    keys_configured = bool(settings.api_keys)
    app.openapi = lambda: openapi_document(app, keys_configured)  # type: ignore[method-assign]
    app.mount(ASSETS, StaticFiles(directory=_assets_dir()), name="docs-assets")
    guarded = keys_configured and not settings.public_docs
    router = APIRouter(include_in_schema=False, dependencies=[Depends(require_api_key)] if guarded else [])

    @router.get(OPENAPI_URL)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @router.get("/docs")
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=OPENAPI_URL, title=f"{app.title} - docs", swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css", swagger_favicon_url=f"{ASSETS}/favicon.png",
        )

    @router.get("/redoc")
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=OPENAPI_URL, title=f"{app.title} - ReDoc", redoc_js_url=f"{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS}/favicon.png", with_google_fonts=False,
        )

    app.include_router(router)
