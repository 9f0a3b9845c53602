"""/healthz and /metrics (no auth: they say nothing about any session)."""

from __future__ import annotations

from typing import Any

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
    body = (await service.manager.runtime.probe(timeout_s=5)).as_health()
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
