"""The FastAPI app: ``create_app(settings)``; long-lived state is made in the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from api.server import errors, schemas
from api.server.middleware import AccessLog, AuthGate, BodyLimit
from api.server.routes import execute, files, health, sessions
from api.server.service import SandboxService
from api.server.settings import Settings


def create_app(settings: Settings | None = None,
               service: SandboxService | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc = service or SandboxService(settings)
        await svc.start()
        app.state.service = svc
        try:
            yield
        finally:
            await svc.shutdown()

    app = FastAPI(title="Agent Box", version="1",
                  description="Hardened Jupyter-kernel sandboxes over HTTP.", lifespan=lifespan)
    errors.install(app)
    for router in (sessions.router, execute.router, files.router, health.router):
        app.include_router(router)
    serve_settings_in_openapi(app, settings)
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)
    app.add_middleware(AuthGate, settings=settings)  # outside BodyLimit: runs first
    app.add_middleware(AccessLog)
    return app


def serve_settings_in_openapi(app: FastAPI, settings: Settings) -> None:
    """/openapi.json says this server's maxima and rules (api/server/schemas.py), so a request
    its schema allows is one it accepts."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schemas.document_settings(FastAPI.openapi(app), settings)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]
