"""The ASGI middleware around the app: the key before the body, the body's bound, one
structured access-log line per request (and the JSON log format)."""

from __future__ import annotations

import json
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.server import errors
from api.server.deps import SCOPE_KEY, match_key
from api.server.errors import ApiError
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
    client that has shown no key (how long a body may take is api/server/connections.py's)."""

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
