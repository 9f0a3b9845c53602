"""The old home of :mod:`sandbox.integrations.mcp`; kept so existing imports
(``from sandbox.mcp_server import build_server, run, ...``) keep working.

Like the new package, it loads the MCP SDK only when :func:`build_server` is used.
"""

from typing import Any

from sandbox.integrations import mcp as _mcp
from sandbox.integrations.mcp import (
    CLOSE_TIMEOUT_S,
    HTTP_IDLE_TIMEOUT_S,
    HTTP_MAX_SESSIONS,
    MAX_TEXT_CHARS,
    SESSION_META_KEY,
    TABLE_CELL_CHARS,
    TABLE_ROWS,
    BearerAuth,
    BoxScope,
    HttpLimits,
    Sandboxes,
    SessionGuard,
    Transport,
    api_keys,
    bind_http,
    dataframe_table,
    render_text,
    run,
    sandboxes,
    scope_of,
    transport_security,
)

__all__ = [
    "CLOSE_TIMEOUT_S", "HTTP_IDLE_TIMEOUT_S", "HTTP_MAX_SESSIONS", "MAX_TEXT_CHARS",
    "SESSION_META_KEY", "TABLE_CELL_CHARS", "TABLE_ROWS", "BearerAuth", "BoxScope",
    "HttpLimits", "Sandboxes", "SessionGuard", "Transport", "api_keys", "bind_http",
    "dataframe_table", "render_text", "run", "sandboxes", "scope_of", "transport_security",
]


def __getattr__(name: str) -> Any:  # build_server and the tools' constants, loaded lazily
    return getattr(_mcp, name)
