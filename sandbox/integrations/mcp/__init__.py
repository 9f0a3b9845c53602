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

Modules: :mod:`.handles` (which sandbox a call uses), :mod:`.server` (the tools; the
only one that imports the SDK, loaded when :func:`build_server` is first used),
:mod:`.guard` (:class:`SessionGuard`), :mod:`.binding` (:func:`bind_http`,
:class:`BearerAuth`), :mod:`.serve` (:func:`run`), :mod:`.limits`. The text rendering
(:mod:`sandbox.integrations._text`) needs no MCP SDK: LangChain uses it too.
"""

from typing import TYPE_CHECKING, Any

from sandbox.integrations._text import (
    MAX_TEXT_CHARS,
    TABLE_CELL_CHARS,
    TABLE_ROWS,
    dataframe_table,
    render_text,
)
from sandbox.integrations.mcp.binding import BearerAuth, api_keys, bind_http, transport_security
from sandbox.integrations.mcp.guard import SessionGuard
from sandbox.integrations.mcp.handles import (
    SESSION_META_KEY,
    BoxScope,
    Sandboxes,
    sandboxes,
    scope_of,
)
from sandbox.integrations.mcp.limits import (
    CLOSE_TIMEOUT_S,
    HTTP_IDLE_TIMEOUT_S,
    HTTP_MAX_SESSIONS,
    HttpLimits,
)
from sandbox.integrations.mcp.serve import Transport, run

if TYPE_CHECKING:
    from sandbox.integrations.mcp.server import (
        DOWNLOAD_LIMIT,
        INSTRUCTIONS,
        MAX_IMAGES,
        RASTER_MIMES,
        WORKDIR,
        build_server,
    )

# Loaded on first use: they import the MCP SDK (the `mcp` extra).
_FROM_SERVER = ("DOWNLOAD_LIMIT", "INSTRUCTIONS", "MAX_IMAGES", "RASTER_MIMES", "WORKDIR",
                "build_server")

__all__ = [
    "CLOSE_TIMEOUT_S", "DOWNLOAD_LIMIT", "HTTP_IDLE_TIMEOUT_S", "HTTP_MAX_SESSIONS",
    "INSTRUCTIONS", "MAX_IMAGES", "MAX_TEXT_CHARS", "RASTER_MIMES", "SESSION_META_KEY",
    "TABLE_CELL_CHARS", "TABLE_ROWS", "WORKDIR", "BearerAuth", "BoxScope", "HttpLimits",
    "Sandboxes", "SessionGuard", "Transport", "api_keys", "bind_http", "build_server",
    "dataframe_table", "render_text", "run", "sandboxes", "scope_of", "transport_security",
]


def __getattr__(name: str) -> Any:
    if name in _FROM_SERVER:
        from sandbox.integrations.mcp import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
