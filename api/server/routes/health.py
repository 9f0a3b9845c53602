"""/healthz and /metrics (no auth: they say nothing about any session)."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.server.deps import Service
from api.server.routes.sessions import operation_id
from api.server.schemas import Health

router = APIRouter(tags=["health"], generate_unique_id_function=operation_id)


@router.get("/healthz", response_model=Health,
            responses={503: {"model": Health, "description": "Not ready: no engine, no "
                             "current image, or shutting down"}})
async def healthz(service: Service) -> Any:
    from sandbox import SandboxError

    # Private until the runtime has a health probe of its own (see the report of issue 12).
    from sandbox._image import image_status
    from sandbox._runtime.engine import connect

    def probe() -> dict[str, Any]:
        try:
            client = connect(timeout=5)
        except SandboxError as exc:
            return {"engine": False, "engine_error": str(exc), "image_present": False}
        try:
            status = image_status(client)
            return {"engine": True, "image": status["tag"], "image_present": status["current"]}
        finally:
            client.close()

    body = await anyio.to_thread.run_sync(probe)
    body.update({"pool": service.manager.pool_level, "pool_target": service.settings.pool_size,
                 "sessions": len(service.owned), "accepting": service.accepting})
    ok = body["engine"] and body["image_present"] and service.accepting
    body["status"] = "ok" if ok else "unavailable"
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(service: Service) -> Response:
    service.metrics.sessions_active.set(len(service.owned))
    service.metrics.pool_size.set(service.manager.pool_level)
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
