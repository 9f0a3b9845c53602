"""/v1/sessions: create, list, get, delete, interrupt, restart, notebook."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Request, Response
from fastapi.routing import APIRoute

from api.server.deps import Key, Service
from api.server.schemas import (
    CreateSession,
    ErrorResponse,
    Notebook,
    SessionList,
    SessionOut,
    error_responses,
)


def operation_id(route: APIRoute) -> str:
    """Short operation ids (create_session, execute, ...): generated clients name their
    calls after them."""
    return route.name


router = APIRouter(prefix="/v1/sessions", tags=["sessions"],
                   generate_unique_id_function=operation_id,
                   responses=error_responses(401, 404, 422))


@router.post("", status_code=201, response_model=SessionOut,
             responses={400: {"model": ErrorResponse, "description": "The body is not JSON"},
                        429: {"model": ErrorResponse, "description": "The key or the server "
                              "has its maximum of sessions (open or starting); Retry-After"},
                        503: {"model": ErrorResponse, "description": "Too many sessions are "
                              "starting (start_queue_full), or the start failed; "
                              "Retry-After"}})
async def create_session(service: Service, key: Key,
                         body: Annotated[CreateSession, Body(default_factory=CreateSession)]
                         ) -> SessionOut:
    """No body is the same as ``{}``: every field has a default."""
    return await service.create(key, body)


@router.get("", response_model=SessionList)
async def list_sessions(service: Service, key: Key, request: Request) -> SessionList:
    """``?metadata.team=data`` keeps sessions whose metadata has team=data."""
    wanted = {k.removeprefix("metadata."): v for k, v in request.query_params.items()
              if k.startswith("metadata.")}
    return SessionList(sessions=service.list_sessions(key, wanted))


@router.get("/{session_id}", response_model=SessionOut)
async def get_session(service: Service, key: Key, session_id: str) -> SessionOut:
    return service.get(key, session_id)


@router.delete("/{session_id}", status_code=204)
async def delete_session(service: Service, key: Key, session_id: str) -> Response:
    await service.delete(key, session_id)
    return Response(status_code=204)


@router.post("/{session_id}/interrupt", status_code=204)
async def interrupt(service: Service, key: Key, session_id: str) -> Response:
    await service.interrupt(key, session_id)
    return Response(status_code=204)


@router.post("/{session_id}/restart", response_model=SessionOut, responses=error_responses(
    e503="The new kernel did not start (session_start_failed)"))
async def restart(service: Service, key: Key, session_id: str) -> SessionOut:
    """A fresh kernel, files kept. A restart that a delete overtakes ends in 404."""
    return await service.restart(key, session_id)


@router.get("/{session_id}/notebook", response_class=Response, responses={200: {
    "description": "nbformat 4 JSON",
    "content": {"application/x-ipynb+json": {
        "schema": Notebook.model_json_schema()}}}})
async def notebook(service: Service, key: Key, session_id: str) -> Response:
    """The session's cells and outputs as nbformat 4, also after it was closed."""
    body = await service.notebook(key, session_id)
    return Response(body, media_type="application/x-ipynb+json", headers={
        "Content-Disposition": f'attachment; filename="{session_id}.ipynb"'})
