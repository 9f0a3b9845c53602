"""Every private attribute of another library that the sandbox has to touch, in one place.

Each is an undeclared version pin: the library may rename or drop it in any release.
So none is reached anywhere else, each accessor says why there is no public way, and
``tests/unit/test_compat.py`` checks each against the installed version, so an upgrade
that changes one fails there, by name, not somewhere deep in a session.

This module imports none of those libraries (it is a leaf: it only reads attributes of
objects handed to it), so using one accessor costs nothing.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable
from typing import Any


def raw_socket(sock: Any) -> Any:
    """The socket inside what docker-py's ``exec_start(socket=True)`` returns.

    On a Unix or plain TCP engine that is the response's ``socket.SocketIO`` (stdlib),
    whose socket is its private ``_sock``; the event loop can wait only on the socket
    itself. TLS and SSH engines hand back a socket-like object already (no ``_sock``),
    returned as it is."""
    return getattr(sock, "_sock", sock)


def connection_file_written(kernel_manager: Any) -> bool:
    """Whether jupyter_client's KernelManager wrote its connection file
    (``ConnectionFileMixin._connection_file_written``): ``cleanup_connection_file``
    removes a file the manager did not write too, so the provisioner asks first."""
    return bool(getattr(kernel_manager, "_connection_file_written", False))


def mcp_connection(session: Any) -> Any:
    """The ``mcp.server.connection.Connection`` behind an MCP ``ServerSession``
    (its ``_connection``, mcp 2.3): the SDK offers no public accessor from a tool's
    context to the connection, whose session id names the sandbox. None if absent."""
    return getattr(session, "_connection", None)


def mcp_lowlevel_server(server: Any) -> Any:
    """The low-level ``mcp.server.lowlevel.Server`` inside an ``MCPServer``
    (``_lowlevel_server``): what ``run_stdio_async`` drives, needed to run stdio with a
    stdin and signal handling of our own."""
    return server._lowlevel_server


def forget_captured_signals(server: Any) -> None:
    """Clear the signals a ``uvicorn.Server`` re-raises after its graceful shutdown
    (``_captured_signals``), so that a clean stop on SIGTERM exits 0. No-op if absent."""
    captured = getattr(server, "_captured_signals", None)
    if isinstance(captured, list):
        captured.clear()


def register_atexit_before_threads(fn: Callable[[], object]) -> None:
    """Run *fn* at interpreter exit before non-daemon threads are joined
    (``threading._register_atexit``: ``atexit`` runs only after the join, too late to
    close sessions whose loops run in threads). Falls back to ``atexit`` without it."""
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        try:
            register(fn)
            return
        except RuntimeError:  # interpreter shutdown has begun
            pass
    atexit.register(fn)
