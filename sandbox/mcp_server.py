"""``agentbox mcp``: sandboxes served over the Model Context Protocol (official SDK, mcp 2.x).

Tools: ``run_code``, ``upload_file``, ``download_file``, ``list_files``, ``restart``.

**One sandbox per MCP session**, started on the first tool call that needs it:

- *stdio* (either protocol era): the process serves exactly one client, and the SDK
  enters the server lifespan once per stdio connection, so the sandbox belongs to the
  lifespan and is removed when the client closes stdin (or on SIGTERM/SIGINT).
- *streamable HTTP* with the ``initialize`` handshake: each ``Mcp-Session-Id`` is one
  SDK ``Connection``; its sandbox is removed from the connection's ``exit_stack``
  when the session ends (client DELETE, idle timeout) and, at the latest, when the
  lifespan ends with the server. :class:`SessionGuard` bounds the sessions
  (:data:`HTTP_MAX_SESSIONS`) and closes one after :data:`HTTP_IDLE_TIMEOUT_S`
  without a request, an open SSE stream or not; past the bound a new client gets a
  503 with Retry-After at once. The endpoint binds only loopback addresses unless
  told otherwise, and the SDK's Host/Origin (DNS-rebinding) check is always on, for
  exactly the name and address bound (:func:`bind_http`).
- *streamable HTTP* at protocol 2026-07-28 (the SDK client's default) is stateless:
  a request belongs to no session, so the sandbox is named by the tools' ``session``
  argument instead. ``run_code`` or ``upload_file`` without it start a sandbox and
  return its handle (a text line, and ``_meta["agentbox/session"]``); later calls pass
  it. A handle is bound to the API key that got it, at most ``max_sessions`` are open,
  and one unused for ``idle_timeout_s`` is closed with its sandbox.
- *API keys*: with ``AGENTBOX_API_KEYS`` / ``AGENTBOX_API_KEYS_FILE`` set (as for
  ``agentbox serve``) every HTTP request needs ``Authorization: Bearer <key>``
  (:class:`BearerAuth`, 401 otherwise), and the endpoint may bind beyond loopback.

Results: the cell's text (stdout, stderr, value, DataFrames as markdown tables, image
markers, the traceback, notes on timeout/death/truncation) as one text block, then
each raster image as ``ImageContent``. ``isError`` is true when the cell did not
finish cleanly (status ``error``, ``timeout`` or ``died``): the content is the same,
the flag lets a client tell a failed cell from a clean one without parsing text.
Bad arguments and sandbox failures are tool errors (``isError`` with the message).

The text rendering here needs no MCP SDK (``sandbox.langchain_tool`` uses it too);
the SDK is imported by :func:`build_server` only.
"""

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import hashlib
import hmac
import io
import ipaddress
import json
import logging
import math
import mimetypes
import os
import re
import secrets
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

import anyio
import anyio.abc

from sandbox._config import MiB, SandboxConfig
from sandbox._exceptions import ConfigError, SandboxError, SessionLostError
from sandbox._files import check_path
from sandbox._models import DATAFRAME_MIME, IMAGE_MIMES, DisplayOutput, ErrorOutput, ExecutionResult
from sandbox._session import AsyncSession, SessionState

if TYPE_CHECKING:
    from mcp.server.connection import Connection
    from mcp.server.context import ServerRequestContext
    from mcp.server.mcpserver import MCPServer
    from mcp.server.transport_security import TransportSecuritySettings
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("sandbox.mcp")

Transport = Literal["stdio", "streamable-http"]

MAX_TEXT_CHARS = 40_000  # of one result's text; the middle is cut beyond this
TABLE_ROWS = 20
TABLE_CELL_CHARS = 60
MAX_IMAGES = 8  # attached per result; the rest are markers only
RASTER_MIMES = ("image/png", "image/jpeg", "image/gif", "image/webp")
DOWNLOAD_LIMIT = 2 * MiB
CLOSE_TIMEOUT_S = 30.0
HTTP_MAX_SESSIONS = 32  # open MCP sessions over streamable HTTP, each with at most one sandbox
HTTP_IDLE_TIMEOUT_S = 5 * 60.0  # a session with no request for this long is closed, its sandbox removed
SESSION_META_KEY = "agentbox/session"  # a stateless result's _meta: the sandbox's handle
_HANDLE = re.compile(r"[A-Za-z0-9_-]{1,64}")
WORKDIR = "/home/sandbox"


# -- text rendering (no MCP dependency) -------------------------------------------------
def render_text(result: ExecutionResult, *, max_chars: int = MAX_TEXT_CHARS) -> str:
    """A compact, model-readable rendering of *result*, outputs in order."""
    parts: list[str] = []
    for out in result.outputs:
        if isinstance(out, DisplayOutput):
            parts.append(_display_text(out))
        elif isinstance(out, ErrorOutput):
            parts.append("\n".join(out.traceback).strip("\n") or f"{out.ename}: {out.evalue}")
        elif out.name == "stderr":
            parts.append("[stderr]\n" + out.text.rstrip("\n"))
        else:
            parts.append(out.text.rstrip("\n"))
    if result.status == "died":
        reason = result.death.reason if result.death else "the kernel stopped"
        parts.append(f"[died] {reason}; the next call starts a fresh kernel")
    elif result.status == "timeout":
        limit = f" ({result.timeout.limit_s:g}s)" if result.timeout else ""
        parts.append(f"[timeout] the code ran past its time limit{limit} and was stopped")
    elif result.status == "error" and result.error is None:
        parts.append("[error] the execution failed")
    parts.extend(f"[note] {note}" for note in result.notes)
    if result.truncated and not result.notes:
        parts.append("[note] output was truncated")
    text = "\n".join(p for p in parts if p) or "[no output]"
    if len(text) > max_chars:
        head, tail = max_chars * 3 // 4, max_chars // 4
        text = (f"{text[:head]}\n[... {len(text) - head - tail} characters omitted ...]\n"
                f"{text[-tail:]}")
    return text


def _display_text(out: DisplayOutput) -> str:
    data = out.data
    frame = data.get(DATAFRAME_MIME)
    if isinstance(frame, Mapping):
        with contextlib.suppress(Exception):  # kernel data is untrusted: fall back to text
            return dataframe_table(frame)
    markers = [f"[image: {mime}, {_image_size(data[mime], mime)} bytes]"
               for mime in IMAGE_MIMES if isinstance(data.get(mime), str)]
    if markers:
        return "\n".join(markers)
    plain = data.get("text/plain")
    if isinstance(plain, str):
        return plain
    return f"[display: {', '.join(sorted(data))}]"


def _image_size(value: str, mime: str) -> int:
    if mime == "image/svg+xml":
        return len(value.encode())
    try:
        return len(base64.b64decode(value))
    except (binascii.Error, ValueError):
        return 0


def dataframe_table(payload: Mapping[str, Any], *, max_rows: int = TABLE_ROWS) -> str:
    """The structured DataFrame/Series form as an aligned markdown table of its first rows."""
    columns = [str(c) for c in payload.get("columns") or []]
    dtypes = [str(t) for t in payload.get("dtypes") or []]
    index = list(payload.get("index") or [])
    rows = [r for r in payload.get("data") or [] if isinstance(r, list)]
    shown = rows[:max_rows]
    names = [str(n) for n in payload.get("index_names") or [] if n is not None]
    header = [", ".join(names), *columns]
    body = [[_cell(index[i] if i < len(index) else ""),
             *[_cell(v) for v in (row + [None] * len(columns))[:len(columns)]]]
            for i, row in enumerate(shown)]
    numeric = [False, *[t.lower().startswith(("int", "uint", "float")) for t in dtypes]]
    widths = [max(3, *(len(r[c]) for r in (header, *body))) for c in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(
            cell.rjust(w) if c < len(numeric) and numeric[c] else cell.ljust(w)
            for c, (cell, w) in enumerate(zip(cells, widths, strict=True))) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if c < len(numeric) and numeric[c] else "-")
                          for c, w in enumerate(widths)) + "|"
    shape = payload.get("shape") or [len(rows), len(columns)]
    kind = "Series" if payload.get("kind") == "series" else "DataFrame"
    caption = f"{kind}: {shape[0]} rows × {shape[1]} columns"
    if len(shown) < int(shape[0]):
        caption += f" (first {len(shown)} rows shown)"
    if payload.get("truncated_columns"):
        caption += f" (first {len(columns)} columns shown)"
    return "\n".join([caption, line(header), rule, *(line(r) for r in body)])


def _cell(value: object) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, list | dict) \
        else str(value)
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")
    return text if len(text) <= TABLE_CELL_CHARS else text[:TABLE_CELL_CHARS - 1] + "…"


# -- sandboxes by MCP session ---------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BoxScope:
    """Which sandbox a tool call uses: an MCP session's, or a stateless handle's."""

    key: str
    connection: "Connection | None" = None
    handle: str | None = None  # stateless requests: what the client passes as `session`
    issued: bool = False  # the handle is new, issued by this call


class Sandboxes:
    """The sandboxes of one server lifespan, one per scope key (an MCP session or a
    stateless handle). Handles are bounded and reclaimed here (sessions by
    :class:`SessionGuard`): at most ``limits.max_sessions``, each closed after
    ``limits.idle_timeout_s`` without a call."""

    def __init__(self, config: SandboxConfig, task_group: anyio.abc.TaskGroup,
                 limits: "HttpLimits | None" = None) -> None:
        self.config = config
        self.limits = limits or HttpLimits()
        self._tg = task_group
        self._boxes: dict[str, AsyncSession] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._handles: dict[str, _Tracked] = {}  # open stateless handles, by key
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

    def _claim(self, scope: BoxScope) -> "_Tracked":
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
        tracked = self._handles[scope.key] = _Tracked(time.monotonic())
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

    async def get(self, key: str, connection: "Connection | None") -> AsyncSession:
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
                    limits: "HttpLimits | None" = None) -> AsyncIterator[Sandboxes]:
    """Owns every sandbox started within; all are removed (shielded) on the way out."""
    async with anyio.create_task_group() as tg:
        boxes = Sandboxes(config, tg, limits)
        try:
            yield boxes
        finally:
            boxes.close_all()  # the task group waits for the removals


def scope_of(request: "ServerRequestContext[Any, Any]", session: str | None = None, *,
             issue: bool = False) -> BoxScope:
    """Which sandbox a request uses: its MCP session's (stdio, or HTTP with the handshake),
    else (stateless HTTP) the one *session* names; *issue*: a new handle when none is given."""
    from mcp.server.connection import Connection

    # mcp 2.3 offers no public accessor from a tool's context to its Connection.
    connection = getattr(request.session, "_connection", None)
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


# -- the server ------------------------------------------------------------------------------
INSTRUCTIONS = f"""\
A stateful Python sandbox (IPython kernel) in a locked-down container: no network,
working directory {WORKDIR}. Variables, imports and files persist between run_code
calls of this MCP session. pandas, numpy, scipy, matplotlib and pyarrow are installed.
Figures come back as images, DataFrames as tables. A client without an MCP session
(stateless requests) passes, as `session`, the handle its first run_code returned."""


def build_server(config: SandboxConfig | None = None, *, download_limit: int = DOWNLOAD_LIMIT,
                 limits: "HttpLimits | None" = None) -> "MCPServer[Sandboxes]":
    """An MCP server whose tools drive one sandbox per MCP session."""
    # The SDK is imported here, not at module level, so the rendering above works
    # without the `mcp` extra. The tools' annotations are evaluated at definition
    # time (this module has no `from __future__ import annotations`), as the SDK
    # reads them to build the input schemas.
    from mcp.server.mcpserver import Context, MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp.types import (
        BlobResourceContents,
        CallToolResult,
        ContentBlock,
        EmbeddedResource,
        ImageContent,
        TextContent,
        ToolAnnotations,
    )
    from pydantic import Field

    base = config or SandboxConfig()
    box_config = base.with_(max_download_bytes=min(base.max_download_bytes, download_limit))
    boxes_limits = limits or HttpLimits()

    @contextlib.asynccontextmanager
    async def lifespan(_: "MCPServer[Sandboxes]") -> AsyncIterator[Sandboxes]:
        async with sandboxes(box_config, boxes_limits) as boxes:
            yield boxes

    server: MCPServer[Sandboxes] = MCPServer("agentbox", instructions=INSTRUCTIONS,
                                             version=_version(), lifespan=lifespan)

    @contextlib.contextmanager
    def tool_errors(ctx: Context[Sandboxes, Any], scope: BoxScope | None = None) -> Iterator[None]:
        """Sandbox failures as tool errors; a lost sandbox is dropped for a fresh one."""
        try:
            yield
        except SessionLostError as exc:
            if scope is not None:
                ctx.request_context.lifespan_context.discard(scope.key)
            raise ToolError(f"{exc}; the next call starts a fresh sandbox (variables and "
                            "files are gone)") from exc
        except SandboxError as exc:  # ConfigError, UnsafePathError, FileOperationError...
            raise ToolError(str(exc)) from exc

    @contextlib.asynccontextmanager
    async def sandbox(ctx: Context[Sandboxes, Any], session: str | None, *, issue: bool = False,
                      create: bool = True) -> AsyncIterator[tuple[AsyncSession | None, BoxScope]]:
        """The call's sandbox (None: *create* is off and it has none) and its scope; a
        sandbox failure inside the block is a tool error."""
        boxes = ctx.request_context.lifespan_context
        with tool_errors(ctx):
            scope = scope_of(ctx.request_context, session, issue=issue)
        with tool_errors(ctx, scope):
            async with boxes.hold(scope, create=create) as box:
                yield box, scope

    def issued_note(scope: BoxScope) -> str | None:
        if not scope.issued:
            return None
        return (f'[session] {scope.handle}: pass session="{scope.handle}" to the next calls to '
                "keep using this sandbox (its variables and files); it is removed after "
                f"{boxes_limits.idle_timeout_s:g}s without a call")

    def meta_of(scope: BoxScope) -> dict[str, Any] | None:
        return {SESSION_META_KEY: scope.handle} if scope.handle is not None else None

    session_field = Field(description="stateless clients (protocol 2026-07-28) only: the "
                          "sandbox handle a first run_code or upload_file returned; leave "
                          "it out in an MCP session (stdio, or HTTP with initialize)")

    @server.tool(annotations=ToolAnnotations(title="Run Python", destructive_hint=False,
                                             open_world_hint=False))
    async def run_code(
        ctx: Context[Sandboxes, Any],
        code: Annotated[str, Field(description="Python source (IPython syntax) to run")],
        timeout_s: Annotated[float | None, Field(
            gt=0, le=3600, description="time limit for this call in seconds (default "
            f"{box_config.execution_timeout_s:g})")] = None,
        session: Annotated[str | None, session_field] = None,
    ) -> CallToolResult:
        """Run Python code in this session's sandbox and return its output.

        State persists between calls: variables, imports and files in the working
        directory. The value of the last expression is shown, DataFrames as tables,
        matplotlib figures as images. An exception comes back as its traceback with
        isError set; a cell over its time limit is stopped (timeout)."""
        async with sandbox(ctx, session, issue=True) as (box, scope):
            assert box is not None
            result = await box.execute(code, timeout=timeout_s)
        content: list[ContentBlock] = [TextContent(text=render_text(result))]
        images = [(mime, blob) for mime, blob in result.images if mime in RASTER_MIMES]
        content += [ImageContent(data=base64.b64encode(blob).decode(), mime_type=mime)
                    for mime, blob in images[:MAX_IMAGES]]
        if len(images) > MAX_IMAGES:
            content.append(TextContent(text=f"[note] {len(images) - MAX_IMAGES} more images "
                                            "not attached"))
        if (note := issued_note(scope)) is not None:
            content.append(TextContent(text=note))
        return CallToolResult(content=content, is_error=result.status != "ok", meta=meta_of(scope))

    @server.tool(annotations=ToolAnnotations(
        title="Upload a file", destructive_hint=True, idempotent_hint=True,
        open_world_hint=False))
    async def upload_file(
        ctx: Context[Sandboxes, Any],
        path: Annotated[str, Field(description=f"path relative to {WORKDIR}; parents are "
                                               "created, an existing file is replaced")],
        content_base64: Annotated[str | None, Field(description="the bytes, base64")] = None,
        text: Annotated[str | None, Field(description="or the content as UTF-8 text")] = None,
        session: Annotated[str | None, session_field] = None,
    ) -> CallToolResult:
        """Write a file into the sandbox's working directory (give content_base64 or text)."""
        if (content_base64 is None) == (text is None):
            raise ToolError("give exactly one of content_base64 or text")
        if content_base64 is not None:
            try:
                data = base64.b64decode(content_base64, validate=True)
            except binascii.Error as exc:
                raise ToolError(f"content_base64 is not valid base64: {exc}") from exc
        else:
            data = (text or "").encode()
        async with sandbox(ctx, session, issue=True) as (box, scope):
            assert box is not None
            await box.upload(path, data)
        lines = [f"wrote {len(data)} bytes to {path}", issued_note(scope)]
        return CallToolResult(content=[TextContent(text="\n".join(x for x in lines if x))],
                              meta=meta_of(scope))

    @server.tool(description="Read a file from the sandbox's working directory: UTF-8 text as "
                 "text, PNG/JPEG/GIF/WebP as an image, other bytes as a base64 blob. Files "
                 f"over {box_config.max_download_bytes} bytes are refused.",
                 annotations=ToolAnnotations(title="Download a file", read_only_hint=True,
                                             open_world_hint=False))
    async def download_file(
        ctx: Context[Sandboxes, Any],
        path: Annotated[str, Field(description=f"path relative to {WORKDIR}")],
        session: Annotated[str | None, session_field] = None,
    ) -> CallToolResult:
        async with sandbox(ctx, session) as (box, _):
            assert box is not None
            data = await box.download(path)
        mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
        if mime in RASTER_MIMES:
            return CallToolResult(content=[ImageContent(data=base64.b64encode(data).decode(),
                                                        mime_type=mime)])
        try:
            return CallToolResult(content=[TextContent(text=data.decode("utf-8"))])
        except UnicodeDecodeError:
            blob = BlobResourceContents(uri=f"file://{WORKDIR}/{check_path(path)}",
                                        mime_type=mime, blob=base64.b64encode(data).decode())
            return CallToolResult(content=[
                TextContent(text=f"{path}: {len(data)} bytes, not UTF-8 text; base64 below"),
                EmbeddedResource(resource=blob)])

    @server.tool(structured_output=False, annotations=ToolAnnotations(
        title="List files", read_only_hint=True, open_world_hint=False))
    async def list_files(ctx: Context[Sandboxes, Any],
                         session: Annotated[str | None, session_field] = None) -> str:
        """List every file and directory under the sandbox's working directory."""
        async with sandbox(ctx, session) as (box, _):
            assert box is not None
            files = await box.list_files()
        if not files:
            return "(the working directory is empty)"
        return "\n".join(f"{f.path}/" if f.is_dir else f"{f.path}\t{f.size} bytes"
                         for f in sorted(files, key=lambda f: f.path))

    @server.tool(structured_output=False, annotations=ToolAnnotations(
        title="Restart the kernel", destructive_hint=True, idempotent_hint=True,
        open_world_hint=False))
    async def restart(ctx: Context[Sandboxes, Any],
                      session: Annotated[str | None, session_field] = None) -> str:
        """Restart the Python kernel: variables and imports are cleared, files are kept."""
        async with sandbox(ctx, session, create=False) as (box, _):
            if box is None:
                return "no sandbox was running; the next run_code starts a fresh one"
            await box.restart()
        return "restarted: a fresh kernel is running; variables are gone, files are kept"

    return server


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("agentbox")
    except PackageNotFoundError:
        return "0"


# -- streamable HTTP: what may reach the endpoint, and for how long -------------------------
@dataclasses.dataclass(frozen=True)
class HttpLimits:
    """Bounds of the streamable-HTTP endpoint (the CLI's --max-sessions, --idle-timeout)."""

    max_sessions: int = HTTP_MAX_SESSIONS
    idle_timeout_s: float = HTTP_IDLE_TIMEOUT_S

    def __post_init__(self) -> None:
        if not 1 <= self.max_sessions <= 10_000:
            raise ConfigError(f"max_sessions must be 1..10000, not {self.max_sessions}")
        if not (math.isfinite(self.idle_timeout_s) and 0 < self.idle_timeout_s <= 24 * 3600):
            raise ConfigError(f"idle_timeout_s must be in (0, 86400], not {self.idle_timeout_s}")


def _is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is loopback too
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def _is_wildcard(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_unspecified
    except ValueError:
        return False


def _host_header(name: str, port: int) -> str:
    name = f"[{name}]" if ":" in name else name  # an IPv6 literal, as a Host header writes it
    return name if port == 80 else f"{name}:{port}"


def bind_http(host: str, port: int, *, allow_remote: bool = False,
              allowed_hosts: Sequence[str] = ()) -> tuple[socket.socket, list[str]]:
    """A listening socket for the MCP endpoint and the Host headers it answers to.

    Without API keys the endpoint has no authentication, so by default it binds only
    what really is a loopback address: every address *host* resolves to must be one
    (``localhost`` that resolves elsewhere is refused), and so must the address actually
    bound (*allow_remote*: with keys, or behind a proxy that authenticates). The Host
    headers allowed are exactly the name given and the address bound, with the port
    bound (a browser on a DNS-rebound name sends that name: refused), ``localhost`` too
    when the address bound is 127.0.0.1 or ::1 (what it resolves to), plus
    *allowed_hosts* (what a proxy in front sends)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve {host!r}: {exc}") from exc
    addresses = [str(info[4][0]) for info in infos]
    if not allow_remote and not all(_is_loopback(a) for a in addresses):
        raise ConfigError(f"refusing to bind {host} ({', '.join(sorted(set(addresses)))}): the "
                          "MCP endpoint has no authentication; set AGENTBOX_API_KEYS (or "
                          "AGENTBOX_API_KEYS_FILE), bind a loopback address, or pass "
                          "--allow-remote behind a proxy that authenticates")
    family, kind, proto, _, address = infos[0]
    if _is_wildcard(str(address[0])) and not allowed_hosts:
        raise ConfigError(f"binding {host} would answer to any name: pass --allowed-host with "
                          "the host[:port] clients (or the proxy) send")
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    bound_address, bound_port = str(sock.getsockname()[0]), int(sock.getsockname()[1])
    if not allow_remote and not _is_loopback(bound_address):  # what the kernel really bound
        sock.close()
        raise ConfigError(f"{host} bound {bound_address}, which is not a loopback address")
    names = [] if _is_wildcard(bound_address) else [host, bound_address]
    if bound_address in ("127.0.0.1", "::1"):  # a client may well say "localhost"
        names.append("localhost")
    names = list(dict.fromkeys(names))
    hosts = [_host_header(n, bound_port) for n in names] + list(allowed_hosts)
    return sock, hosts


def transport_security(hosts: Sequence[str]) -> "TransportSecuritySettings":
    """The SDK's DNS-rebinding protection, on, for exactly *hosts*: a Host header not in
    the list is answered 421, an Origin that is not one of them 403 (no Origin: allowed,
    as non-browser clients send none)."""
    from mcp.server.transport_security import TransportSecuritySettings

    origins = [f"{scheme}://{h}" for h in hosts for scheme in ("http", "https")]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True,
                                     allowed_hosts=list(hosts), allowed_origins=origins)


@dataclasses.dataclass
class _Tracked:
    last_active: float
    in_flight: int = 0
    owner: bytes = b""  # a session's: digest of the Authorization header that opened it


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

    def __init__(self, app: "ASGIApp", limits: HttpLimits, host_header: str,
                 path: str = "/mcp") -> None:
        self.app, self.limits, self.path = app, limits, path
        self._host = host_header.encode()
        self._sessions: dict[str, _Tracked] = {}
        self._opening = 0  # initialize requests admitted whose answer is not known yet
        self._reaper: asyncio.Task[None] | None = None
        self.reclaimed = 0  # sessions ended for being idle (logged too)

    async def __call__(self, scope: "Scope", receive: "Receive", send: "Send") -> None:
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

    async def _open(self, scope: "Scope", receive: "Receive", send: "Send",
                    owner: bytes) -> None:
        if len(self._sessions) + self._opening >= self.limits.max_sessions:
            await self._reap_overdue()
        if len(self._sessions) + self._opening >= self.limits.max_sessions:
            await self._refuse(scope, receive, send)
            return
        self._opening += 1
        opened: list[str] = []

        async def watch(message: "Message") -> None:
            if message["type"] == "http.response.start" and not opened:
                ids = [v.decode("latin-1") for k, v in message.get("headers", [])
                       if k.lower() == b"mcp-session-id"]
                if message["status"] < 400 and ids:
                    # Counted as a session from here on, no longer as an opening (the
                    # answer may stream for a while yet).
                    opened.append(ids[0])
                    self._sessions[ids[0]] = _Tracked(time.monotonic(), in_flight=1,
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

    async def _in_session(self, session_id: str, scope: "Scope", receive: "Receive",
                          send: "Send", owner: bytes) -> None:
        tracked = self._sessions.get(session_id)
        if tracked is not None and not hmac.compare_digest(tracked.owner, owner):
            from starlette.responses import JSONResponse

            body = {"jsonrpc": "2.0", "id": None,
                    "error": {"code": -32001, "message": "Session not found"}}
            await JSONResponse(body, status_code=404)(scope, receive, send)
            return
        counts = tracked is not None and scope["method"] == "POST"
        status: list[int] = []

        async def watch(message: "Message") -> None:
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

    async def _refuse(self, scope: "Scope", receive: "Receive", send: "Send") -> None:
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

        async def receive() -> "Message":
            return messages.pop() if len(messages) > 1 else messages[0]

        async def discard(_: "Message") -> None:
            return None

        with anyio.move_on_after(CLOSE_TIMEOUT_S):
            await self.app(scope, receive, discard)
        self.reclaimed += 1
        log.info("closed idle MCP session %s (no request for %gs); its sandbox is removed",
                 session_id[:12], self.limits.idle_timeout_s)

    def _on_shutdown(self, receive: "Receive") -> "Receive":
        async def wrapped() -> "Message":
            message = await receive()
            if message["type"] == "lifespan.shutdown" and self._reaper is not None:
                self._reaper.cancel()
            return message

        return wrapped


# -- API keys -------------------------------------------------------------------------------
def api_keys(environ: Mapping[str, str] | None = None) -> list[str]:
    """The bearer tokens, read as ``agentbox serve`` reads them: ``AGENTBOX_API_KEYS``
    (comma-separated) and ``AGENTBOX_API_KEYS_FILE`` (one a line, ``#`` comments)."""
    env = os.environ if environ is None else environ
    tokens = [t.strip() for t in env.get("AGENTBOX_API_KEYS", "").split(",") if t.strip()]
    path = env.get("AGENTBOX_API_KEYS_FILE", "").strip()
    if path:
        try:
            with open(path, encoding="utf-8") as keys_file:
                lines = keys_file.read().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read AGENTBOX_API_KEYS_FILE {path}: {exc}") from exc
        tokens += [t for t in (line.split("#", 1)[0].strip() for line in lines) if t]
    return tokens


class BearerAuth:
    """ASGI middleware: every HTTP request needs ``Authorization: Bearer <one of the
    keys>``, else 401 with ``WWW-Authenticate: Bearer`` (before any session is counted
    or any sandbox started). Each key is compared as a SHA-256 digest with
    ``hmac.compare_digest``, all of them every time: the answer's timing says nothing
    about which key, or how much of one, matched."""

    def __init__(self, app: "ASGIApp", keys: Sequence[str]) -> None:
        if not keys:
            raise ConfigError("BearerAuth needs at least one key")
        self.app = app
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]
        self.refused = 0

    def allows(self, authorization: bytes) -> bool:
        scheme, _, token = authorization.partition(b" ")
        offered = hashlib.sha256(token.strip()).digest()
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(known, offered)
        return matched and scheme.lower() == b"bearer"

    async def __call__(self, scope: "Scope", receive: "Receive", send: "Send") -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict((k.lower(), v) for k, v in scope["headers"])
        if self.allows(headers.get(b"authorization", b"")):
            await self.app(scope, receive, send)
            return
        from starlette.responses import JSONResponse

        self.refused += 1
        body = {"jsonrpc": "2.0", "id": None, "error": {"code": -32001, "message": (
            "missing or wrong API key: send Authorization: Bearer <key> (one of "
            "AGENTBOX_API_KEYS / AGENTBOX_API_KEYS_FILE)")}}
        await JSONResponse(body, status_code=401, headers={
            "WWW-Authenticate": 'Bearer realm="agentbox"'})(scope, receive, send)


def run(transport: Transport = "stdio", host: str = "127.0.0.1", port: int = 8000, *,
        config: SandboxConfig | None = None, allow_remote: bool = False,
        allowed_hosts: Sequence[str] = (), limits: HttpLimits | None = None,
        keys: Sequence[str] | None = None) -> None:
    """Serve until the client disconnects (stdio) or the process is signalled; every
    sandbox is removed on the way out. Over HTTP, *keys* (default: :func:`api_keys`)
    turn on bearer authentication and allow a non-loopback bind."""
    if transport not in ("stdio", "streamable-http"):
        raise ConfigError(f"unknown transport {transport!r}; use stdio or streamable-http")
    if transport == "stdio":
        anyio.run(_serve_stdio, build_server(config))
        return
    limits = limits or HttpLimits()
    keys = list(api_keys() if keys is None else keys)
    sock, hosts = bind_http(host, port, allow_remote=allow_remote or bool(keys),
                            allowed_hosts=allowed_hosts)
    log.info("MCP endpoint on %s (auth %s)", hosts[0] if hosts else host,
                "on: bearer API keys" if keys else "off")
    with sock:
        anyio.run(_serve_http, build_server(config, limits=limits), sock, hosts, limits, keys)


async def _serve_http(server: "MCPServer[Sandboxes]", sock: socket.socket, hosts: list[str],
                      limits: HttpLimits, keys: Sequence[str] = ()) -> None:
    """uvicorn on our own socket (the one whose address the Host check was built from);
    uvicorn handles SIGINT/SIGTERM: graceful shutdown runs the lifespan's exit."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal once it has shut down, so the process would
            # end "killed by SIGTERM"; a clean stop exits 0, as `agentbox serve` does.
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

    app = server.streamable_http_app(
        transport_security=transport_security(hosts),
        # The guard bounds sessions and ends idle ones; the SDK's limit stays as a backstop.
        max_sessions=limits.max_sessions, session_idle_timeout=None)
    guarded: ASGIApp = SessionGuard(app, limits, host_header=hosts[0])
    if keys:
        guarded = BearerAuth(guarded, keys)
    config = uvicorn.Config(guarded, log_level=server.settings.log_level.lower(),
                            timeout_graceful_shutdown=int(CLOSE_TIMEOUT_S))
    await Server(config).serve(sockets=[sock])


async def _serve_stdio(server: "MCPServer[Sandboxes]") -> None:
    from mcp.server.stdio import stdio_server

    lowlevel = server._lowlevel_server  # what MCPServer.run_stdio_async drives
    async with anyio.create_task_group() as tg:
        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
                async for _ in sigs:
                    tg.cancel_scope.cancel()  # the lifespan's exit still removes the sandbox
                    return

        tg.start_soon(stop_on_signal)
        async with stdio_server(stdin=_Stdin()) as (read, write):
            await lowlevel.run(read, write, lowlevel.create_initialization_options())
        tg.cancel_scope.cancel()


class _Stdin(anyio.AsyncFile[str]):
    """stdin read by a daemon thread. The SDK reads it in a worker thread that a
    cancellation must wait for, so a signalled server would hang until the client
    sent another line; here a pending read is simply left behind."""

    def __init__(self) -> None:
        super().__init__(io.TextIOWrapper(os.fdopen(os.dup(0), "rb"), encoding="utf-8",
                                          errors="replace"))
        self._lines: asyncio.Queue[str] | None = None

    async def readline(self) -> str:
        if self._lines is None:
            lines: asyncio.Queue[str] = asyncio.Queue()
            self._lines = lines
            loop = asyncio.get_running_loop()

            def pump() -> None:
                with contextlib.suppress(Exception):  # the loop may be gone when we are
                    for line in iter(self.wrapped.readline, ""):
                        loop.call_soon_threadsafe(lines.put_nowait, line)
                    loop.call_soon_threadsafe(lines.put_nowait, "")

            threading.Thread(target=pump, name="mcp-stdin", daemon=True).start()
        return await self._lines.get()
