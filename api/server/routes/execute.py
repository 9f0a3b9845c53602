"""Executing code: JSON, or server-sent events with ``Accept: text/event-stream``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from api.server.deps import Key, Service
from api.server.routes.sessions import operation_id
from api.server.schemas import (
    ErrorResponse,
    ExecuteRequest,
    ExecuteResponse,
    OneShotRequest,
    error_responses,
    wire_result,
)

router = APIRouter(tags=["execute"], generate_unique_id_function=operation_id,
                   responses=error_responses(401, 404, 409, 413, 422))


def wants_stream(request: Request) -> bool:
    return "text/event-stream" in request.headers.get("accept", "")


@router.post("/v1/sessions/{session_id}/execute", response_model=ExecuteResponse,
             responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}},
                        400: {"model": ErrorResponse, "description": "The body is not JSON"}})
async def execute(service: Service, key: Key, session_id: str, body: ExecuteRequest,
                  request: Request) -> Any:
    """Run a cell. An error in the code is a 200 with ``status: "error"``. A session
    runs one cell at a time: a second concurrent request gets 409."""
    if wants_stream(request):
        events = await service.stream(key, session_id, body.code, body.timeout_s)
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})
    # Answered as built (ExecuteResponse documents it): no validation pass on the hot path.
    return JSONResponse(wire_result(await service.execute(key, session_id, body.code,
                                                          body.timeout_s)))


@router.post("/v1/execute", response_model=ExecuteResponse,
             responses={400: {"model": ErrorResponse, "description": "The body is not JSON"},
                        # it starts a session: the key's or the server's maximum applies
                        429: {"model": ErrorResponse},
                        503: {"model": ErrorResponse, "description": "Too many sessions "
                              "are starting, or the start failed; Retry-After"}})
async def one_shot(service: Service, key: Key, body: OneShotRequest) -> Any:
    """A fresh sandbox runs the code and is torn down."""
    return JSONResponse(wire_result(await service.one_shot(key, body.code, body.timeout_s,
                                                           body.limits, body.env)))
