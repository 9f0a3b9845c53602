"""Which sandbox a tool call uses, and the sandboxes of one server lifespan.

An MCP session (stdio, or streamable HTTP with the ``initialize`` handshake) has its
own sandbox; a stateless request (protocol 2026-07-28) names one by a handle that
an earlier call issued, bound to the API key that got it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from sandbox._compat import mcp_connection
from sandbox._config import SandboxConfig
from sandbox._exceptions import SandboxError
from sandbox._session import AsyncSession, SessionState
from sandbox.integrations.mcp.limits import CLOSE_TIMEOUT_S, HttpLimits, Tracked

if TYPE_CHECKING:
    from mcp.server.connection import Connection
    from mcp.server.context import ServerRequestContext

log = logging.getLogger("sandbox.mcp")

SESSION_META_KEY = "agentbox/session"  # a stateless result's _meta: the sandbox's handle
_HANDLE = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclasses.dataclass(frozen=True)
class BoxScope:
    """Which sandbox a tool call uses: an MCP session's, or a stateless handle's."""

    key: str
    connection: Connection | None = None
    handle: str | None = None  # stateless requests: what the client passes as `session`
    issued: bool = False  # the handle is new, issued by this call


class Sandboxes:
    """The sandboxes of one server lifespan, one per scope key (an MCP session or a
    stateless handle). Handles are bounded and reclaimed here (sessions by
    :class:`SessionGuard`): at most ``limits.max_sessions``, each closed after
    ``limits.idle_timeout_s`` without a call."""

    def __init__(self, config: SandboxConfig, task_group: anyio.abc.TaskGroup,
                 limits: HttpLimits | None = None) -> None:
        self.config = config
        self.limits = limits or HttpLimits()
        self._tg = task_group
        self._boxes: dict[str, AsyncSession] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._handles: dict[str, Tracked] = {}  # open stateless handles, by key
        self._reaper: anyio.CancelScope | None = None
        self._closing = False
        self.reclaimed = 0  # handles closed for being idle (logged too)

    @contextlib.asynccontextmanager
    async def hold(self, scope: BoxScope, *, create: bool = True
                   ) -> AsyncIterator[AsyncSession | None]:
        """The scope's sandbox for one tool call; a handle in use is never reclaimed."""
        tracked = self._claim(scope) if scope.handle is not None else None
        if tracked is not None:
            tracked.in_flight += 1
        try:
            try:
                box = await self.get(scope.key, scope.connection) if create \
                    else self.peek(scope.key)
            except BaseException:
                if scope.issued:  # the client never learns this handle: free its slot now
                    self._handles.pop(scope.key, None)
                raise
            yield box
        finally:
            if tracked is not None:
                tracked.in_flight -= 1
                tracked.last_active = time.monotonic()

    def _claim(self, scope: BoxScope) -> Tracked:
        tracked = self._handles.get(scope.key)
        if tracked is not None:
            return tracked
        if not scope.issued:
            raise SandboxError(
                f"unknown session {scope.handle!r}: it was closed (after "
                f"{self.limits.idle_timeout_s:g}s without a call, or a server restart) or "
                "was never issued to this API key; call run_code without `session` to start "
                "a new sandbox (variables and files of the old one are gone)")
        if len(self._handles) >= self.limits.max_sessions:
            self._reap_overdue()
        if len(self._handles) >= self.limits.max_sessions:
            log.warning("refused a new stateless sandbox: %d are open (the limit)",
                        len(self._handles))
            raise SandboxError(
                f"too many open sandboxes ({self.limits.max_sessions}); one is closed after "
                f"{self.limits.idle_timeout_s:g}s without a call: retry later, or reuse a "
                "`session` you were given")
        tracked = self._handles[scope.key] = Tracked(time.monotonic())
        if self._reaper is None:
            self._reaper = anyio.CancelScope()
            self._tg.start_soon(self._reap_forever, self._reaper)
        return tracked

    async def _reap_forever(self, scope: anyio.CancelScope) -> None:
        interval = min(5.0, max(0.05, self.limits.idle_timeout_s / 4))
        with scope:
            while True:
                await anyio.sleep(interval)
                self._reap_overdue()

    def _reap_overdue(self) -> None:
        deadline = time.monotonic() - self.limits.idle_timeout_s
        for key, tracked in list(self._handles.items()):
            if not tracked.in_flight and tracked.last_active <= deadline:
                del self._handles[key]
                self.discard(key)
                self.reclaimed += 1
                log.info("closed idle stateless sandbox %s (no call for %gs)",
                         key.rsplit(":", 1)[-1][:8], self.limits.idle_timeout_s)

    def peek(self, key: str) -> AsyncSession | None:
        box = self._boxes.get(key)
        return box if box is not None and box.state is not SessionState.CLOSED else None

    async def get(self, key: str, connection: Connection | None) -> AsyncSession:
        """The scope's sandbox, started now if it has none (or lost the one it had)."""
        async with self._locks.setdefault(key, asyncio.Lock()):
            if self._closing:
                raise SandboxError("the server is shutting down")
            box = self.peek(key)
            if box is None:
                box = self._boxes[key] = AsyncSession(self.config)
                try:  # shielded: a caller that leaves mid-start leaves a usable sandbox
                    with anyio.CancelScope(shield=True):
                        await box.start()
                except BaseException:
                    self._boxes.pop(key, None)
                    raise
                if connection is not None:  # the SDK unwinds this when the session ends
                    connection.exit_stack.callback(self.discard, key, box)
            return box

    def discard(self, key: str, box: AsyncSession | None = None) -> None:
        """Forget the scope's sandbox and remove it in the background (bounded, shielded)."""
        current = self._boxes.get(key)
        if current is not None and (box is None or current is box):
            del self._boxes[key]
            self._locks.pop(key, None)
            self._tg.start_soon(_close, current)

    def close_all(self) -> None:
        self._closing = True
        if self._reaper is not None:
            self._reaper.cancel()
        self._handles.clear()
        for key in list(self._boxes):
            self.discard(key)


async def _close(box: AsyncSession) -> None:
    with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
        await box.close()


@contextlib.asynccontextmanager
async def sandboxes(config: SandboxConfig,
                    limits: HttpLimits | None = None) -> AsyncIterator[Sandboxes]:
    """Owns every sandbox started within; all are removed (shielded) on the way out."""
    async with anyio.create_task_group() as tg:
        boxes = Sandboxes(config, tg, limits)
        try:
            yield boxes
        finally:
            boxes.close_all()  # the task group waits for the removals


def scope_of(request: ServerRequestContext[Any, Any], session: str | None = None, *,
             issue: bool = False) -> BoxScope:
    """Which sandbox a request uses: its MCP session's (stdio, or HTTP with the handshake),
    else (stateless HTTP) the one *session* names; *issue*: a new handle when none is given."""
    from mcp.server.connection import Connection

    connection = mcp_connection(request.session)
    if isinstance(connection, Connection) and connection.session_id is not None:
        scope = BoxScope(f"http:{connection.session_id}", connection)
    elif request.request is None:
        scope = BoxScope("stdio")
    else:
        return _stateless_scope(request.request, session, issue=issue)
    if session is not None:
        raise SandboxError("this MCP session has its own sandbox: leave `session` out (it "
                           "names a sandbox only in stateless requests, protocol 2026-07-28)")
    return scope


def _stateless_scope(http_request: Any, session: str | None, *, issue: bool) -> BoxScope:
    # A handle belongs to the key that got it: another key naming it gets "unknown".
    headers = getattr(http_request, "headers", None) or {}
    owner = hashlib.sha256(str(headers.get("authorization", "")).encode()).hexdigest()[:16]
    if session is None:
        if not issue:
            raise SandboxError(
                "no sandbox named: a stateless request (protocol 2026-07-28) names its sandbox "
                "with `session`; call run_code without it to start one, then pass the "
                "session it returns")
        handle = secrets.token_urlsafe(18)
        return BoxScope(f"handle:{owner}:{handle}", handle=handle, issued=True)
    if not _HANDLE.fullmatch(session):
        raise SandboxError("`session` is a handle this server returned (letters, digits, - "
                           "and _, at most 64)")
    return BoxScope(f"handle:{owner}:{session}", handle=session)

