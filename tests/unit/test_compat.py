"""Each private attribute of another library that sandbox/_compat.py reaches, checked
against the installed version: an upgrade that renames or drops one fails here, by name."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from sandbox import _compat


def test_docker_exec_socket_is_a_socketio_around_the_socket() -> None:
    # docker-py's exec_start(socket=True) hands back response.raw._fp.fp.raw: on a Unix
    # or plain TCP engine a socket.SocketIO, whose socket is its _sock.
    import docker.api.client

    source = Path(docker.api.client.__file__).read_text()
    assert "sock = response.raw._fp.fp.raw" in source, "docker-py changed how it finds the socket"
    left, right = socket.socketpair()
    try:
        wrapped = socket.SocketIO(left, "rb")
        assert _compat.raw_socket(wrapped) is left
        assert _compat.raw_socket(right) is right  # TLS/SSH: already the socket
        wrapped.close()
    finally:
        left.close()
        right.close()


def test_jupyter_client_connection_file_written(tmp_path: Path) -> None:
    from jupyter_client.manager import KernelManager

    km = KernelManager(connection_file=str(tmp_path / "kernel.json"))
    assert "_connection_file_written" in km.trait_names()
    assert _compat.connection_file_written(km) is False
    km.write_connection_file()
    assert _compat.connection_file_written(km) is True
    km.cleanup_connection_file()
    assert _compat.connection_file_written(km) is False


def test_mcp_server_session_keeps_its_connection() -> None:
    from mcp.server.connection import Connection
    from mcp.server.session import ServerSession

    connection = Connection(object(), protocol_version="2025-06-18", session_id="abc")  # type: ignore[arg-type]
    session = ServerSession(object(), connection)  # type: ignore[arg-type]
    assert _compat.mcp_connection(session) is connection
    assert _compat.mcp_connection(object()) is None


def test_mcp_server_has_its_lowlevel_server() -> None:
    from mcp.server.lowlevel import Server
    from mcp.server.mcpserver import MCPServer

    server: Any = MCPServer("compat-test")
    lowlevel = _compat.mcp_lowlevel_server(server)
    assert isinstance(lowlevel, Server)
    assert hasattr(lowlevel, "run") and hasattr(lowlevel, "create_initialization_options")


def test_uvicorn_server_captured_signals() -> None:
    import signal

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app=None))
    server.handle_exit(signal.SIGTERM, None)
    assert server._captured_signals == [signal.SIGTERM]  # what it re-raises after shutdown
    _compat.forget_captured_signals(server)
    assert server._captured_signals == []
    _compat.forget_captured_signals(object())  # absent: nothing to do


def test_threading_register_atexit_exists() -> None:
    register = getattr(threading, "_register_atexit", None)
    assert callable(register), "threading._register_atexit is gone: sessions in threads " \
                               "would be closed after the thread join, too late"


def test_register_atexit_falls_back_to_atexit(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[object] = []
    monkeypatch.delattr(threading, "_register_atexit")
    monkeypatch.setattr("atexit.register", seen.append)
    _compat.register_atexit_before_threads(print)
    assert seen == [print]


PRIVATE = ("_sock", "_connection_file_written", "_connection", "_lowlevel_server",
           "_captured_signals", "_register_atexit")
HOMES = {Path("sandbox/_compat.py"), Path("api/server/_compat.py")}


def test_no_other_module_reaches_those_attributes() -> None:
    """The accessors above are the only way in: an attribute access (``x._sock``, or
    ``getattr(x, "_sock")``) of one of those names anywhere else in sandbox/ or api/
    fails here, so a new use lands in the module whose tests follow the library."""
    import ast

    root = Path(__file__).resolve().parents[2]
    found = []
    for path in sorted([*root.glob("sandbox/**/*.py"), *root.glob("api/**/*.py")]):
        rel = path.relative_to(root)
        if rel in HOMES:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(rel))):
            name = node.attr if isinstance(node, ast.Attribute) and \
                not (isinstance(node.value, ast.Name) and node.value.id == "self") else \
                node.value if isinstance(node, ast.Constant) else None
            if name in PRIVATE:
                found.append(f"{rel}:{node.lineno}: {name}")
    assert not found, found
