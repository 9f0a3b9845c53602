"""The FastAPI app: ``create_app(settings)``; long-lived state is made in the lifespan."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.server import connections, errors, schemas
from api.server.deps import SCOPE_KEY, match_key
from api.server.errors import ApiError
from api.server.routes import execute, files, health, sessions
from api.server.service import SandboxService
from api.server.settings import Settings

log = logging.getLogger("agentbox.api")


def is_api_path(path: str) -> bool:
    """The routes that take a key (every one of them is under /v1)."""
    return path == "/v1" or path.startswith("/v1/")


class AuthGate:
    """Checks the bearer key of every /v1 request before anything reads its body: a
    client without a valid key gets its 401 (and the connection closed, so whatever body
    it still sends is never read) at the cost of its headers only. The key id is left in
    the scope for get_key."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_api_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        keys = self.settings.keys()
        if keys:
            header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            try:
                scope[SCOPE_KEY] = match_key(header, keys)
            except ApiError as exc:
                response = errors.to_response(exc)
                response.headers["connection"] = "close"
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """Answers 413 to request bodies over the limit, Content-Length or not. JSON bodies
    are small, so they are read here (up to the limit) and replayed to the app; uploads
    (PUT .../files/...) stream past this and are bounded by their route. Only /v1 bodies
    are read, after AuthGate: no other route reads a body, so none is buffered for a
    client that has shown no key (how long a body may take is api/connections.py's)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or not is_api_path(scope["path"])
                or (scope["method"] == "PUT" and "/files/" in scope["path"])):
            await self.app(scope, receive, send)
            return
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                response = errors.error_response(
                    413, "too_large", f"request body exceeds {self.limit} bytes")
                await response(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # after the body: wait for the disconnect

        await self.app(scope, replay, send)


class AccessLog:
    """One structured line per request (pure ASGI: BaseHTTPMiddleware would hide a
    client's disconnect from streaming responses, and a cell would run on unwatched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.monotonic()
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = scope.get("route")
            log.info("request", extra={
                "method": scope["method"], "route": getattr(route, "path", scope["path"]),
                "status": status, "ms": round((time.monotonic() - t0) * 1000, 1),
                "session_id": (scope.get("path_params") or {}).get("session_id")})


class JsonLines(logging.Formatter):
    """One JSON object per line: message plus the structured extras."""

    SKIP = set(vars(logging.makeLogRecord({})))

    def format(self, record: logging.LogRecord) -> str:
        body = {"ts": round(record.created, 3), "level": record.levelname,
                "logger": record.name, "msg": record.getMessage()}
        body.update({k: v for k, v in vars(record).items()
                     if k not in self.SKIP and not k.startswith("_")})
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


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
    """/openapi.json says this server's maxima and rules (api/schemas.py), so a request
    its schema allows is one it accepts."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schemas.document_settings(FastAPI.openapi(app), settings)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


class GracefulServer(uvicorn.Server):
    """uvicorn, but on SIGTERM/SIGINT the running cells are ended *before* uvicorn waits
    for open requests to finish (a cell may run for minutes), then the lifespan removes
    every container and closes the history."""

    def __init__(self, config: uvicorn.Config, app: FastAPI,
                 guard: connections.ConnectionGuard | None = None) -> None:
        super().__init__(config)
        self.agentbox_app = app
        self.guard = guard
        self.accept_errors = connections.RateLimitedLog(
            connections.log, "accept() failing (out of descriptors or memory): new "
            "connections wait", guard.limits.log_interval_s if guard else 10.0)

    async def startup(self, sockets: Any = None) -> None:
        # Before listening: an exhausted accept loop is logged as a rate from the start.
        connections.install_accept_error_handler(asyncio.get_running_loop(), self.accept_errors)
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal once it has shut down, so the process would end
        # "killed by SIGTERM"; a clean stop of this service exits 0 instead.
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list):
            captured.clear()

    async def shutdown(self, sockets: Any = None) -> None:
        service = getattr(self.agentbox_app.state, "service", None)
        if isinstance(service, SandboxService):
            await service.drain()
        await super().shutdown(sockets)
        # Counts still waiting for their window are said now, not lost with the process.
        self.accept_errors.flush()
        if self.guard is not None:
            self.guard.events.flush()


def connection_guard(settings: Settings) -> connections.ConnectionGuard:
    """The caps and deadlines of every client connection, with the total kept below the
    descriptor limit (raised toward the hard limit first)."""
    nofile = connections.raise_nofile_limit()
    reserve = settings.fd_reserve
    if reserve is None:
        reserve = connections.default_fd_reserve(settings.max_sessions, settings.pool_size,
                                                 settings.accept_backlog)
    budget = connections.connection_budget(settings.max_connections, reserve, nofile)
    if budget < settings.max_connections:
        log.warning("connection cap lowered to fit the descriptor limit", extra={
            "max_connections": settings.max_connections, "effective": budget,
            "rlimit_nofile": nofile, "fd_reserve": reserve})
    return connections.ConnectionGuard(connections.Limits(
        max_connections=budget, max_per_client=settings.max_connections_per_client,
        header_timeout_s=settings.header_timeout_s, body_timeout_s=settings.body_timeout_s,
        send_timeout_s=settings.send_timeout_s))


def server_for(settings: Settings, **uvicorn_options: Any) -> GracefulServer:
    """The server `agentbox serve` and the tests run: uvicorn's h11 protocol with the
    connection guard (api/connections.py); no WebSocket upgrades (no route uses them)."""
    app = create_app(settings)
    guard = connection_guard(settings)
    options: dict[str, Any] = {
        "http": connections.protocol_class(guard), "ws": "none",
        "backlog": settings.accept_backlog,
        "h11_max_incomplete_event_size": settings.max_header_bytes}
    options.update(uvicorn_options)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, lifespan="on", **options)
    return GracefulServer(config, app, guard)
