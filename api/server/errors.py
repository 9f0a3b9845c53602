"""Domain errors → HTTP, in one table. Every error body is
``{"error": {"code": "...", "message": "..."}}``."""

from __future__ import annotations

import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from sandbox import (
    CapacityError,
    ConfigError,
    EngineUnavailableError,
    FileOperationError,
    ImageError,
    SandboxError,
    SessionBusyError,
    SessionClosedError,
    SessionLostError,
    SessionNotFoundError,
    SessionStartError,
    StartQueueFullError,
    UnsafePathError,
)


class ApiError(Exception):
    """An error raised by the API layer itself, with its status and code."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


# (exception type, HTTP status, error code); first match wins.
ERROR_TABLE: list[tuple[type[Exception], int, str]] = [
    (SessionNotFoundError, 404, "session_not_found"),
    (SessionClosedError, 404, "session_not_found"),
    (SessionBusyError, 409, "session_busy"),
    (CapacityError, 429, "capacity"),
    (StartQueueFullError, 503, "start_queue_full"),
    (ConfigError, 422, "invalid_settings"),
    (UnsafePathError, 400, "unsafe_path"),
    (EngineUnavailableError, 503, "engine_unavailable"),
    (ImageError, 503, "image_unavailable"),
    (SessionStartError, 503, "session_start_failed"),
    (SessionLostError, 410, "session_lost"),
]
# Retry-After (seconds) for refusals a retry can pass; a StartQueueFullError carries
# its own estimate. An image that is missing stays missing: no Retry-After there.
RETRY_AFTER: list[tuple[type[Exception], int]] = [
    (CapacityError, 5), (EngineUnavailableError, 5), (SessionStartError, 2)]
FILE_CODES = {"not_found": 404, "too_large": 413, "is_directory": 409, "symlink": 403,
              "not_a_file": 409, "not_a_directory": 409, "no_space": 507,
              "unsafe_path": 400,
              # the session's file operations: too many at once; the box did not finish one
              # by the host's deadline; earlier ones it stopped still hold the box
              "busy": 429, "timeout": 504, "stuck": 409}


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def to_response(exc: Exception) -> JSONResponse:
    if isinstance(exc, ApiError):
        resp = error_response(exc.status, exc.code, exc.message)
        resp.headers.update(exc.headers)
        return resp
    if isinstance(exc, FileOperationError) and not isinstance(exc, UnsafePathError):
        return error_response(FILE_CODES.get(exc.code, 400), f"file_{exc.code}", str(exc))
    for kind, status, code in ERROR_TABLE:
        if isinstance(exc, kind):
            resp = error_response(status, code, str(exc))
            retry = retry_after(exc)
            if retry is not None:
                resp.headers["Retry-After"] = str(retry)
            return resp
    return error_response(500, "sandbox_error", str(exc))


def retry_after(exc: Exception) -> int | None:
    """Whole seconds after which a retry of what *exc* refused may pass, or None."""
    if isinstance(exc, StartQueueFullError):
        return max(1, math.ceil(exc.retry_after_s))
    return next((s for kind, s in RETRY_AFTER if isinstance(exc, kind)), None)


# The methods an Allow header can name (HEAD and OPTIONS are the framework's own).
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(request: Request) -> str:
    """Every method some route takes at this request's path (RFC 9110 Allow): a path
    such as .../files/{path} is served by one route per method, and Starlette's 405
    names only the first one's. Asked of the routes themselves (matches), so included
    routers answer too."""
    allowed = [m for m in METHODS if any(
        route.matches({**request.scope, "method": m})[0] == Match.FULL
        for route in request.app.router.routes)]
    return ", ".join(allowed)


def install(app: FastAPI) -> None:
    async def domain(_: Request, exc: Exception) -> JSONResponse:
        return to_response(exc)

    async def http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        codes = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                 413: "too_large", 415: "unsupported_media_type"}
        resp = error_response(exc.status_code, codes.get(exc.status_code, "http_error"),
                              str(exc.detail))
        # Allow (405) and WWW-Authenticate (401) are part of the answer.
        resp.headers.update(exc.headers or {})
        if exc.status_code == 405:  # Starlette names only the first route's methods
            resp.headers["Allow"] = allowed_methods(request)
        return resp

    async def validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            parts.append(f"{where}: {err.get('msg')}")
        return error_response(422, "invalid_request", "; ".join(parts) or "invalid request")

    app.add_exception_handler(ApiError, domain)
    app.add_exception_handler(SandboxError, domain)
    app.add_exception_handler(StarletteHTTPException, http)
    app.add_exception_handler(RequestValidationError, validation)
