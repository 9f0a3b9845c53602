"""The session guard: streamable-HTTP MCP sessions bounded in number, ended when idle."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import anyio

from sandbox.integrations.mcp.limits import CLOSE_TIMEOUT_S, HttpLimits, Tracked

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("sandbox.mcp")


def _owner_of(headers: Mapping[bytes, bytes]) -> bytes:
    return hashlib.sha256(headers.get(b"authorization", b"")).digest()


class SessionGuard:
    """ASGI middleware in front of the SDK's endpoint: bounds MCP sessions and ends idle ones.

    The SDK counts a session as busy while any request is open, an SSE GET stream
    included, so a client that opened ``initialize`` and a GET stream would hold its
    slot (and its sandbox) for ever. Here a session is idle when no POST (a tool call,
    a list...) has been in flight for ``idle_timeout_s``; an idle session is ended by
    sending its DELETE to the SDK, exactly as a client would, which ends its
    connection, and so removes its sandbox. A new session beyond ``max_sessions`` is
    refused at once: 503 with Retry-After (when the next idle session is due),
    after overdue ones have been ended. A session answers only the Authorization header
    (API key) that opened it: another key naming its id gets 404, as for an unknown id."""

    def __init__(self, app: ASGIApp, limits: HttpLimits, host_header: str,
                 path: str = "/mcp") -> None:
        self.app, self.limits, self.path = app, limits, path
        self._host = host_header.encode()
        self._sessions: dict[str, Tracked] = {}
        self._opening = 0  # initialize requests admitted whose answer is not known yet
        self._reaper: asyncio.Task[None] | None = None
        self.reclaimed = 0  # sessions ended for being idle (logged too)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, self._on_shutdown(receive), send)
            return
        if scope["type"] != "http" or scope["path"].rstrip("/") != self.path:
            await self.app(scope, receive, send)
            return
        if self._reaper is None:
            self._reaper = asyncio.ensure_future(self._reap_forever())
        headers = {k.lower(): v for k, v in scope["headers"]}
        session_id = headers.get(b"mcp-session-id", b"").decode("latin-1") or None
        if session_id is None:
            if scope["method"] == "POST" and self._opens_session(headers):
                await self._open(scope, receive, send, _owner_of(headers))
                return
            await self.app(scope, receive, send)
            return
        await self._in_session(session_id, scope, receive, send, _owner_of(headers))

    @staticmethod
    def _opens_session(headers: dict[bytes, bytes]) -> bool:
        # The SDK's own routing: a 2026-07-28 request (stateless) opens no session.
        from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

        version = headers.get(b"mcp-protocol-version")
        return version is None or version.decode("latin-1") in HANDSHAKE_PROTOCOL_VERSIONS

    async def _open(self, scope: Scope, receive: Receive, send: Send,
                    owner: bytes) -> None:
        if len(self._sessions) + self._opening >= self.limits.max_sessions:
            await self._reap_overdue()
        if len(self._sessions) + self._opening >= self.limits.max_sessions:
            await self._refuse(scope, receive, send)
            return
        self._opening += 1
        opened: list[str] = []

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start" and not opened:
                ids = [v.decode("latin-1") for k, v in message.get("headers", [])
                       if k.lower() == b"mcp-session-id"]
                if message["status"] < 400 and ids:
                    # Counted as a session from here on, no longer as an opening (the
                    # answer may stream for a while yet).
                    opened.append(ids[0])
                    self._sessions[ids[0]] = Tracked(time.monotonic(), in_flight=1,
                                                      owner=owner)
                    self._opening -= 1
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            tracked = self._sessions.get(opened[0]) if opened else None
            if tracked is not None:
                tracked.in_flight -= 1
                tracked.last_active = time.monotonic()
            elif not opened:
                self._opening -= 1

    async def _in_session(self, session_id: str, scope: Scope, receive: Receive,
                          send: Send, owner: bytes) -> None:
        tracked = self._sessions.get(session_id)
        if tracked is not None and not hmac.compare_digest(tracked.owner, owner):
            from starlette.responses import JSONResponse

            body = {"jsonrpc": "2.0", "id": None,
                    "error": {"code": -32001, "message": "Session not found"}}
            await JSONResponse(body, status_code=404)(scope, receive, send)
            return
        counts = tracked is not None and scope["method"] == "POST"
        status: list[int] = []

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        if counts:
            assert tracked is not None
            tracked.in_flight += 1
        try:
            await self.app(scope, receive, watch)
        finally:
            if counts:
                assert tracked is not None
                tracked.in_flight -= 1
                tracked.last_active = time.monotonic()
            gone = status[:1] == [404] or (scope["method"] == "DELETE" and status[:1] == [200])
            if gone:
                self._sessions.pop(session_id, None)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        from starlette.responses import JSONResponse

        retry = math.ceil(self._next_free_in())
        log.warning("refused a new MCP session: %d sessions are open (the limit)",
                    len(self._sessions))
        body = {"jsonrpc": "2.0", "id": None, "error": {"code": -32000, "message": (
            f"too many open sessions ({self.limits.max_sessions}); an idle session is closed "
            f"after {self.limits.idle_timeout_s:g}s without a request: retry in {retry}s")}}
        await JSONResponse(body, status_code=503, headers={"Retry-After": str(retry)})(
            scope, receive, send)

    def _next_free_in(self) -> float:
        now, idle = time.monotonic(), self.limits.idle_timeout_s
        due = [t.last_active + idle - now for t in self._sessions.values() if not t.in_flight]
        return max(1.0, min(due, default=idle))

    async def _reap_forever(self) -> None:
        interval = min(5.0, max(0.05, self.limits.idle_timeout_s / 4))
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):  # one failed DELETE must not stop the reaper
                await self._reap_overdue()

    async def _reap_overdue(self) -> None:
        deadline = time.monotonic() - self.limits.idle_timeout_s
        for session_id, tracked in list(self._sessions.items()):
            if not tracked.in_flight and tracked.last_active <= deadline:
                await self._end(session_id)

    async def _end(self, session_id: str) -> None:
        """The session's DELETE, sent to the SDK as a client would send it."""
        self._sessions.pop(session_id, None)
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "DELETE", "scheme": "http", "path": self.path,
                 "raw_path": self.path.encode(), "query_string": b"", "root_path": "",
                 "headers": [(b"host", self._host), (b"mcp-session-id", session_id.encode())],
                 "client": ("127.0.0.1", 0), "server": None}
        messages: list[Message] = [{"type": "http.disconnect"},
                                   {"type": "http.request", "body": b"", "more_body": False}]

        async def receive() -> Message:
            return messages.pop() if len(messages) > 1 else messages[0]

        async def discard(_: Message) -> None:
            return None

        with anyio.move_on_after(CLOSE_TIMEOUT_S):
            await self.app(scope, receive, discard)
        self.reclaimed += 1
        log.info("closed idle MCP session %s (no request for %gs); its sandbox is removed",
                 session_id[:12], self.limits.idle_timeout_s)

    def _on_shutdown(self, receive: Receive) -> Receive:
        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown" and self._reaper is not None:
                self._reaper.cancel()
            return message

        return wrapped

