"""The MCP server and its tools: ``run_code``, ``upload_file``, ``download_file``,
``list_files``, ``restart``, each on the call's sandbox (:mod:`.handles`).

This module imports the MCP SDK; :mod:`sandbox.integrations.mcp` imports it only when
:func:`build_server` is called. It has no ``from __future__ import annotations`` on
purpose: the SDK reads the tools' annotations, evaluated at definition time, to build
their input schemas.
"""

import base64
import binascii
import contextlib
import mimetypes
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

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

from sandbox._config import MiB, SandboxConfig
from sandbox._exceptions import SandboxError, SessionLostError
from sandbox._files import check_path
from sandbox._models import ExecutionResult
from sandbox._session import AsyncSession
from sandbox.integrations._text import render_text
from sandbox.integrations.mcp.handles import (
    SESSION_META_KEY,
    BoxScope,
    Sandboxes,
    sandboxes,
    scope_of,
)
from sandbox.integrations.mcp.limits import HttpLimits

MAX_IMAGES = 8  # attached per result; the rest are markers only
RASTER_MIMES = ("image/png", "image/jpeg", "image/gif", "image/webp")
DOWNLOAD_LIMIT = 2 * MiB
WORKDIR = "/home/sandbox"

INSTRUCTIONS = f"""\
A stateful Python sandbox (IPython kernel) in a locked-down container: no network,
working directory {WORKDIR}. Variables, imports and files persist between run_code
calls of this MCP session. pandas, numpy, scipy, matplotlib and pyarrow are installed.
Figures come back as images, DataFrames as tables. A client without an MCP session
(stateless requests) passes, as `session`, the handle its first run_code returned."""

Ctx = Context[Sandboxes, Any]

SESSION_FIELD = Field(description="stateless clients (protocol 2026-07-28) only: the "
                      "sandbox handle a first run_code or upload_file returned; leave "
                      "it out in an MCP session (stdio, or HTTP with initialize)")


def build_server(config: SandboxConfig | None = None, *, download_limit: int = DOWNLOAD_LIMIT,
                 limits: HttpLimits | None = None) -> MCPServer[Sandboxes]:
    """An MCP server whose tools drive one sandbox per MCP session."""
    base = config or SandboxConfig()
    box_config = base.with_(max_download_bytes=min(base.max_download_bytes, download_limit))
    boxes_limits = limits or HttpLimits()

    @contextlib.asynccontextmanager
    async def lifespan(_: MCPServer[Sandboxes]) -> AsyncIterator[Sandboxes]:
        async with sandboxes(box_config, boxes_limits) as boxes:
            yield boxes

    server: MCPServer[Sandboxes] = MCPServer("agentbox", instructions=INSTRUCTIONS,
                                             version=_version(), lifespan=lifespan)
    _add_run_code(server, box_config, boxes_limits)
    _add_upload_file(server, boxes_limits)
    _add_download_file(server, box_config)
    _add_list_files_and_restart(server)
    return server


# -- what every tool does around its call -------------------------------------------------
@contextlib.contextmanager
def tool_errors(ctx: Ctx, scope: BoxScope | None = None) -> Iterator[None]:
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
async def sandbox_of(ctx: Ctx, session: str | None, *, issue: bool = False, create: bool = True
                     ) -> AsyncIterator[tuple[AsyncSession | None, BoxScope]]:
    """The call's sandbox (None: *create* is off and it has none) and its scope; a
    sandbox failure inside the block is a tool error."""
    boxes = ctx.request_context.lifespan_context
    with tool_errors(ctx):
        scope = scope_of(ctx.request_context, session, issue=issue)
    with tool_errors(ctx, scope):
        async with boxes.hold(scope, create=create) as box:
            yield box, scope


def issued_note(scope: BoxScope, limits: HttpLimits) -> str | None:
    if not scope.issued:
        return None
    return (f'[session] {scope.handle}: pass session="{scope.handle}" to the next calls to '
            "keep using this sandbox (its variables and files); it is removed after "
            f"{limits.idle_timeout_s:g}s without a call")


def meta_of(scope: BoxScope) -> dict[str, Any] | None:
    return {SESSION_META_KEY: scope.handle} if scope.handle is not None else None


def result_content(result: ExecutionResult) -> list[ContentBlock]:
    """The cell's text, then each raster image (at most :data:`MAX_IMAGES`)."""
    content: list[ContentBlock] = [TextContent(text=render_text(result))]
    images = [(mime, blob) for mime, blob in result.images if mime in RASTER_MIMES]
    content += [ImageContent(data=base64.b64encode(blob).decode(), mime_type=mime)
                for mime, blob in images[:MAX_IMAGES]]
    if len(images) > MAX_IMAGES:
        content.append(TextContent(text=f"[note] {len(images) - MAX_IMAGES} more images "
                                        "not attached"))
    return content


def file_content(path: str, data: bytes) -> list[ContentBlock]:
    """A downloaded file: an image, UTF-8 text, or else a base64 blob."""
    mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
    if mime in RASTER_MIMES:
        return [ImageContent(data=base64.b64encode(data).decode(), mime_type=mime)]
    try:
        return [TextContent(text=data.decode("utf-8"))]
    except UnicodeDecodeError:
        blob = BlobResourceContents(uri=f"file://{WORKDIR}/{check_path(path)}",
                                    mime_type=mime, blob=base64.b64encode(data).decode())
        return [TextContent(text=f"{path}: {len(data)} bytes, not UTF-8 text; base64 below"),
                EmbeddedResource(resource=blob)]


# -- the tools ------------------------------------------------------------------------------
def _add_run_code(server: MCPServer[Sandboxes], box_config: SandboxConfig,
                  limits: HttpLimits) -> None:
    @server.tool(annotations=ToolAnnotations(title="Run Python", destructive_hint=False,
                                             open_world_hint=False))
    async def run_code(
        ctx: Ctx,
        code: Annotated[str, Field(description="Python source (IPython syntax) to run")],
        timeout_s: Annotated[float | None, Field(
            gt=0, le=3600, description="time limit for this call in seconds (default "
            f"{box_config.execution_timeout_s:g})")] = None,
        session: Annotated[str | None, SESSION_FIELD] = None,
    ) -> CallToolResult:
        """Run Python code in this session's sandbox and return its output.

        State persists between calls: variables, imports and files in the working
        directory. The value of the last expression is shown, DataFrames as tables,
        matplotlib figures as images. An exception comes back as its traceback with
        isError set; a cell over its time limit is stopped (timeout)."""
        async with sandbox_of(ctx, session, issue=True) as (box, scope):
            assert box is not None
            result = await box.execute(code, timeout=timeout_s)
        content = result_content(result)
        if (note := issued_note(scope, limits)) is not None:
            content.append(TextContent(text=note))
        return CallToolResult(content=content, is_error=result.status != "ok", meta=meta_of(scope))


def _add_upload_file(server: MCPServer[Sandboxes], limits: HttpLimits) -> None:
    @server.tool(annotations=ToolAnnotations(
        title="Upload a file", destructive_hint=True, idempotent_hint=True,
        open_world_hint=False))
    async def upload_file(
        ctx: Ctx,
        path: Annotated[str, Field(description=f"path relative to {WORKDIR}; parents are "
                                               "created, an existing file is replaced")],
        content_base64: Annotated[str | None, Field(description="the bytes, base64")] = None,
        text: Annotated[str | None, Field(description="or the content as UTF-8 text")] = None,
        session: Annotated[str | None, SESSION_FIELD] = None,
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
        async with sandbox_of(ctx, session, issue=True) as (box, scope):
            assert box is not None
            await box.upload(path, data)
        lines = [f"wrote {len(data)} bytes to {path}", issued_note(scope, limits)]
        return CallToolResult(content=[TextContent(text="\n".join(x for x in lines if x))],
                              meta=meta_of(scope))


def _add_download_file(server: MCPServer[Sandboxes], box_config: SandboxConfig) -> None:
    @server.tool(description="Read a file from the sandbox's working directory: UTF-8 text as "
                 "text, PNG/JPEG/GIF/WebP as an image, other bytes as a base64 blob. Files "
                 f"over {box_config.max_download_bytes} bytes are refused.",
                 annotations=ToolAnnotations(title="Download a file", read_only_hint=True,
                                             open_world_hint=False))
    async def download_file(
        ctx: Ctx,
        path: Annotated[str, Field(description=f"path relative to {WORKDIR}")],
        session: Annotated[str | None, SESSION_FIELD] = None,
    ) -> CallToolResult:
        async with sandbox_of(ctx, session) as (box, _):
            assert box is not None
            data = await box.download(path)
        return CallToolResult(content=file_content(path, data))


def _add_list_files_and_restart(server: MCPServer[Sandboxes]) -> None:
    @server.tool(structured_output=False, annotations=ToolAnnotations(
        title="List files", read_only_hint=True, open_world_hint=False))
    async def list_files(ctx: Ctx, session: Annotated[str | None, SESSION_FIELD] = None) -> str:
        """List every file and directory under the sandbox's working directory."""
        async with sandbox_of(ctx, session) as (box, _):
            assert box is not None
            files = await box.list_files()
        if not files:
            return "(the working directory is empty)"
        return "\n".join(f"{f.path}/" if f.is_dir else f"{f.path}\t{f.size} bytes"
                         for f in sorted(files, key=lambda f: f.path))

    @server.tool(structured_output=False, annotations=ToolAnnotations(
        title="Restart the kernel", destructive_hint=True, idempotent_hint=True,
        open_world_hint=False))
    async def restart(ctx: Ctx, session: Annotated[str | None, SESSION_FIELD] = None) -> str:
        """Restart the Python kernel: variables and imports are cleared, files are kept."""
        async with sandbox_of(ctx, session, create=False) as (box, _):
            if box is None:
                return "no sandbox was running; the next run_code starts a fresh one"
            await box.restart()
        return "restarted: a fresh kernel is running; variables are gone, files are kept"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("agentbox")
    except PackageNotFoundError:
        return "0"
