"""Serving: stdio (one client, one sandbox) or streamable HTTP on a socket of our own."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import signal
import socket
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import anyio

from sandbox._compat import forget_captured_signals, mcp_lowlevel_server
from sandbox._config import SandboxConfig
from sandbox._exceptions import ConfigError
from sandbox.integrations.mcp.binding import BearerAuth, api_keys, bind_http, transport_security
from sandbox.integrations.mcp.guard import SessionGuard
from sandbox.integrations.mcp.limits import CLOSE_TIMEOUT_S, HttpLimits

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer
    from starlette.types import ASGIApp

    from sandbox.integrations.mcp.handles import Sandboxes

log = logging.getLogger("sandbox.mcp")

Transport = Literal["stdio", "streamable-http"]


def run(transport: Transport = "stdio", host: str = "127.0.0.1", port: int = 8000, *,
        config: SandboxConfig | None = None, allow_remote: bool = False,
        allowed_hosts: Sequence[str] = (), limits: HttpLimits | None = None,
        keys: Sequence[str] | None = None) -> None:
    """Serve until the client disconnects (stdio) or the process is signalled; every
    sandbox is removed on the way out. Over HTTP, *keys* (default: :func:`api_keys`)
    turn on bearer authentication and allow a non-loopback bind."""
    if transport not in ("stdio", "streamable-http"):
        raise ConfigError(f"unknown transport {transport!r}; use stdio or streamable-http")
    from sandbox.integrations.mcp.server import build_server  # the SDK, only when serving

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


async def _serve_http(server: MCPServer[Sandboxes], sock: socket.socket, hosts: list[str],
                      limits: HttpLimits, keys: Sequence[str] = ()) -> None:
    """uvicorn on our own socket (the one whose address the Host check was built from);
    uvicorn handles SIGINT/SIGTERM: graceful shutdown runs the lifespan's exit."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal once it has shut down, so the process would
            # end "killed by SIGTERM"; a clean stop exits 0, as `agentbox serve` does.
            forget_captured_signals(self)

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


async def _serve_stdio(server: MCPServer[Sandboxes]) -> None:
    from mcp.server.stdio import stdio_server

    lowlevel = mcp_lowlevel_server(server)  # what MCPServer.run_stdio_async drives
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
