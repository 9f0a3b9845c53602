"""Files in a session's working directory (raw bytes in and out)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request, Response

from api.server.deps import Key, Service
from api.server.errors import ApiError
from api.server.routes.sessions import operation_id
from api.server.schemas import FileList, FileOut, error_responses

router = APIRouter(prefix="/v1/sessions/{session_id}/files", tags=["files"],
                   generate_unique_id_function=operation_id,
                   responses=error_responses(
                       400, 401, 404, 413, 422, 504,
                       e403="A symlink where a file is meant (file_symlink)",
                       e409="A directory where a file is meant, or the other way round",
                       e429="busy: the session's file operations are all taken, and its "
                            "line is full",
                       e507="The box's disk is full (file_no_space)"))
# 504: the box did not finish a file operation by the host's deadline (file_timeout_s).

# The body of an upload is the file's raw bytes, read as a stream (not a form).
UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


@router.get("", response_model=FileList)
async def list_files(service: Service, key: Key, session_id: str, path: str = "") -> FileList:
    """Everything under the working directory (or under ``?path=sub/dir``), recursively;
    symlinks are listed, never followed."""
    files = await service.list_files(key, session_id, path)
    return FileList(files=[FileOut(**f.to_dict()) for f in files])


@router.put("/{path:path}", status_code=204, openapi_extra=UPLOAD_BODY)
async def upload_file(service: Service, key: Key, session_id: str, path: str,
                 request: Request) -> Response:
    limit = service.settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", f"upload exceeds the limit of {limit} bytes")
    service.session(key, session_id)  # 404 before reading a body for nothing

    async def body() -> AsyncIterator[bytes]:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "too_large", f"upload exceeds the limit of {limit} bytes")
            yield chunk

    # The body is read once the session's turn for file operations has come: uploads
    # waiting in line (bounded per session) hold no memory.
    await service.upload(key, session_id, path, body())
    return Response(status_code=204)


@router.get("/{path:path}", response_class=Response,
            responses={200: {"description": "The file's bytes", "content": {
                "application/octet-stream": {"schema": {"type": "string",
                                                        "format": "binary"}}}}})
async def download_file(service: Service, key: Key, session_id: str, path: str) -> Response:
    data = await service.download(key, session_id, path)
    return Response(data, media_type="application/octet-stream")


@router.delete("/{path:path}", status_code=204)
async def delete_file(service: Service, key: Key, session_id: str, path: str) -> Response:
    await service.delete_file(key, session_id, path)
    return Response(status_code=204)
