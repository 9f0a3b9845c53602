"""``agentbox mcp``: sandboxes served over the Model Context Protocol (official SDK, mcp 2.x).

Tools: ``run_code``, ``upload_file``, ``download_file``, ``list_files``, ``restart``.

**One sandbox per MCP session**, started on the first tool call that needs it:

- *stdio* (either protocol era): the process serves exactly one client, and the SDK
  enters the server lifespan once per stdio connection, so the sandbox belongs to the
  lifespan and is removed when the client closes stdin (or on SIGTERM/SIGINT).
- *streamable HTTP* with the ``initialize`` handshake: each ``Mcp-Session-Id`` is one
  SDK ``Connection``; its sandbox is removed from the connection's ``exit_stack``
  when the session ends (client DELETE, idle timeout) and, at the latest, when the
  lifespan ends with the server.
- *streamable HTTP* at protocol 2026-07-28 is stateless: a request belongs to no
  session, so the tools refuse it with a tool error naming the two ways that work.

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
import io
import ipaddress
import json
import mimetypes
import os
import signal
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
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

Transport = Literal["stdio", "streamable-http"]

MAX_TEXT_CHARS = 40_000  # of one result's text; the middle is cut beyond this
TABLE_ROWS = 20
TABLE_CELL_CHARS = 60
MAX_IMAGES = 8  # attached per result; the rest are markers only
RASTER_MIMES = ("image/png", "image/jpeg", "image/gif", "image/webp")
DOWNLOAD_LIMIT = 2 * MiB
CLOSE_TIMEOUT_S = 30.0
HTTP_MAX_SESSIONS = 32
HTTP_IDLE_TIMEOUT_S = 15 * 60.0
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
class Sandboxes:
    """The sandboxes of one server lifespan, one per scope key (an MCP session)."""

    def __init__(self, config: SandboxConfig, task_group: anyio.abc.TaskGroup) -> None:
        self.config = config
        self._tg = task_group
        self._boxes: dict[str, AsyncSession] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._closing = False

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
        for key in list(self._boxes):
            self.discard(key)


async def _close(box: AsyncSession) -> None:
    with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
        await box.close()


@contextlib.asynccontextmanager
async def sandboxes(config: SandboxConfig) -> AsyncIterator[Sandboxes]:
    """Owns every sandbox started within; all are removed (shielded) on the way out."""
    async with anyio.create_task_group() as tg:
        boxes = Sandboxes(config, tg)
        try:
            yield boxes
        finally:
            boxes.close_all()  # the task group waits for the removals


def scope_of(request: "ServerRequestContext[Any, Any]") -> "tuple[str, Connection | None]":
    """The MCP session a request belongs to: its key and, for HTTP, its SDK Connection."""
    from mcp.server.connection import Connection

    # mcp 2.3 offers no public accessor from a tool's context to its Connection.
    connection = getattr(request.session, "_connection", None)
    if isinstance(connection, Connection) and connection.session_id is not None:
        return f"http:{connection.session_id}", connection
    if request.request is None:
        return "stdio", None
    raise SandboxError(
        "this server keeps one sandbox per MCP session, and this request belongs to none "
        "(stateless streamable HTTP, protocol 2026-07-28): connect with the initialize "
        "handshake, which opens a session (mcp.Client(url, mode='legacy')), or run "
        "`agentbox mcp` over stdio")


# -- the server ------------------------------------------------------------------------------
INSTRUCTIONS = f"""\
A stateful Python sandbox (IPython kernel) in a locked-down container: no network,
working directory {WORKDIR}. Variables, imports and files persist between run_code
calls of this MCP session. pandas, numpy, scipy, matplotlib and pyarrow are installed.
Figures come back as images, DataFrames as tables."""


def build_server(config: SandboxConfig | None = None, *,
                 download_limit: int = DOWNLOAD_LIMIT) -> "MCPServer[Sandboxes]":
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

    @contextlib.asynccontextmanager
    async def lifespan(_: "MCPServer[Sandboxes]") -> AsyncIterator[Sandboxes]:
        async with sandboxes(box_config) as boxes:
            yield boxes

    server: MCPServer[Sandboxes] = MCPServer("agentbox", instructions=INSTRUCTIONS,
                                             version=_version(), lifespan=lifespan)

    @contextlib.contextmanager
    def tool_errors(ctx: Context[Sandboxes, Any]) -> Iterator[None]:
        """Sandbox failures as tool errors; a lost sandbox is dropped for a fresh one."""
        try:
            yield
        except SessionLostError as exc:
            ctx.request_context.lifespan_context.discard(scope_of(ctx.request_context)[0])
            raise ToolError(f"{exc}; the next call starts a fresh sandbox (variables and "
                            "files are gone)") from exc
        except SandboxError as exc:  # ConfigError, UnsafePathError, FileOperationError...
            raise ToolError(str(exc)) from exc

    async def sandbox(ctx: Context[Sandboxes, Any], *, create: bool = True) -> AsyncSession | None:
        boxes = ctx.request_context.lifespan_context
        with tool_errors(ctx):
            key, connection = scope_of(ctx.request_context)
            return await boxes.get(key, connection) if create else boxes.peek(key)

    async def use(ctx: Context[Sandboxes, Any]) -> AsyncSession:
        box = await sandbox(ctx)
        assert box is not None
        return box

    @server.tool(annotations=ToolAnnotations(title="Run Python", destructive_hint=False,
                                             open_world_hint=False))
    async def run_code(
        ctx: Context[Sandboxes, Any],
        code: Annotated[str, Field(description="Python source (IPython syntax) to run")],
        timeout_s: Annotated[float | None, Field(
            gt=0, le=3600, description="time limit for this call in seconds (default "
            f"{box_config.execution_timeout_s:g})")] = None,
    ) -> CallToolResult:
        """Run Python code in this session's sandbox and return its output.

        State persists between calls: variables, imports and files in the working
        directory. The value of the last expression is shown, DataFrames as tables,
        matplotlib figures as images. An exception comes back as its traceback with
        isError set; a cell over its time limit is stopped (timeout)."""
        box = await use(ctx)
        with tool_errors(ctx):
            result = await box.execute(code, timeout=timeout_s)
        content: list[ContentBlock] = [TextContent(text=render_text(result))]
        images = [(mime, blob) for mime, blob in result.images if mime in RASTER_MIMES]
        content += [ImageContent(data=base64.b64encode(blob).decode(), mime_type=mime)
                    for mime, blob in images[:MAX_IMAGES]]
        if len(images) > MAX_IMAGES:
            content.append(TextContent(text=f"[note] {len(images) - MAX_IMAGES} more images "
                                            "not attached"))
        return CallToolResult(content=content, is_error=result.status != "ok")

    @server.tool(structured_output=False, annotations=ToolAnnotations(
        title="Upload a file", destructive_hint=True, idempotent_hint=True,
        open_world_hint=False))
    async def upload_file(
        ctx: Context[Sandboxes, Any],
        path: Annotated[str, Field(description=f"path relative to {WORKDIR}; parents are "
                                               "created, an existing file is replaced")],
        content_base64: Annotated[str | None, Field(description="the bytes, base64")] = None,
        text: Annotated[str | None, Field(description="or the content as UTF-8 text")] = None,
    ) -> str:
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
        box = await use(ctx)
        with tool_errors(ctx):
            await box.upload(path, data)
        return f"wrote {len(data)} bytes to {path}"

    @server.tool(description="Read a file from the sandbox's working directory: UTF-8 text as "
                 "text, PNG/JPEG/GIF/WebP as an image, other bytes as a base64 blob. Files "
                 f"over {box_config.max_download_bytes} bytes are refused.",
                 annotations=ToolAnnotations(title="Download a file", read_only_hint=True,
                                             open_world_hint=False))
    async def download_file(
        ctx: Context[Sandboxes, Any],
        path: Annotated[str, Field(description=f"path relative to {WORKDIR}")],
    ) -> CallToolResult:
        box = await use(ctx)
        with tool_errors(ctx):
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
    async def list_files(ctx: Context[Sandboxes, Any]) -> str:
        """List every file and directory under the sandbox's working directory."""
        box = await use(ctx)
        with tool_errors(ctx):
            files = await box.list_files()
        if not files:
            return "(the working directory is empty)"
        return "\n".join(f"{f.path}/" if f.is_dir else f"{f.path}\t{f.size} bytes"
                         for f in sorted(files, key=lambda f: f.path))

    @server.tool(structured_output=False, annotations=ToolAnnotations(
        title="Restart the kernel", destructive_hint=True, idempotent_hint=True,
        open_world_hint=False))
    async def restart(ctx: Context[Sandboxes, Any]) -> str:
        """Restart the Python kernel: variables and imports are cleared, files are kept."""
        box = await sandbox(ctx, create=False)
        if box is None:
            return "no sandbox was running; the next run_code starts a fresh one"
        with tool_errors(ctx):
            await box.restart()
        return "restarted: a fresh kernel is running; variables are gone, files are kept"

    return server


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("agentbox")
    except PackageNotFoundError:
        return "0"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(transport: Transport = "stdio", host: str = "127.0.0.1", port: int = 8000, *,
        config: SandboxConfig | None = None, allow_remote: bool = False) -> None:
    """Serve until the client disconnects (stdio) or the process is signalled; every
    sandbox is removed on the way out."""
    if transport not in ("stdio", "streamable-http"):
        raise ConfigError(f"unknown transport {transport!r}; use stdio or streamable-http")
    if transport == "streamable-http" and not _loopback(host) and not allow_remote:
        raise ConfigError(f"refusing to bind {host}: the MCP endpoint has no authentication; "
                          "bind a loopback address (or pass --allow-remote behind a proxy "
                          "that authenticates)")
    server = build_server(config)
    if transport == "stdio":
        anyio.run(_serve_stdio, server)
    else:  # uvicorn handles SIGINT/SIGTERM: graceful shutdown runs the lifespan's exit
        anyio.run(lambda: server.run_streamable_http_async(
            host=host, port=port, max_sessions=HTTP_MAX_SESSIONS,
            session_idle_timeout=HTTP_IDLE_TIMEOUT_S))


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
