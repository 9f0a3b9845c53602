"""The server `agentbox serve` runs: uvicorn with the connection guard, and a graceful
stop that ends running cells before uvicorn waits for open requests."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import uvicorn
from fastapi import FastAPI

from api.server import connections
from api.server._compat import forget_captured_signals
from api.server.app import create_app
from api.server.service import SandboxService
from api.server.settings import Settings

log = logging.getLogger("agentbox.api")


class GracefulServer(uvicorn.Server):
    """uvicorn, but on SIGTERM/SIGINT the running cells are ended *before* uvicorn waits
    for open requests to finish (a cell may run for minutes), then the lifespan removes
    every container and closes the history."""

    def __init__(self, config: uvicorn.Config, app: FastAPI,
                 guard: connections.ConnectionGuard | None = None) -> None:
        super().__init__(config)
        self.agentbox_app = app
        self.guard = guard
        self.accept_errors = connections.RateLimitedLog(
            connections.log, "accept() failing (out of descriptors or memory): new "
            "connections wait", guard.limits.log_interval_s if guard else 10.0)

    async def startup(self, sockets: Any = None) -> None:
        # Before listening: an exhausted accept loop is logged as a rate from the start.
        connections.install_accept_error_handler(asyncio.get_running_loop(), self.accept_errors)
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal once it has shut down, so the process would end
        # "killed by SIGTERM"; a clean stop of this service exits 0 instead.
        forget_captured_signals(self)

    async def shutdown(self, sockets: Any = None) -> None:
        service = getattr(self.agentbox_app.state, "service", None)
        if isinstance(service, SandboxService):
            await service.drain()
        await super().shutdown(sockets)
        # Counts still waiting for their window are said now, not lost with the process.
        self.accept_errors.flush()
        if self.guard is not None:
            self.guard.events.flush()


def connection_guard(settings: Settings) -> connections.ConnectionGuard:
    """The caps and deadlines of every client connection, with the total kept below the
    descriptor limit (raised toward the hard limit first)."""
    nofile = connections.raise_nofile_limit()
    reserve = settings.fd_reserve
    if reserve is None:
        reserve = connections.default_fd_reserve(settings.max_sessions, settings.pool_size,
                                                 settings.accept_backlog)
    budget = connections.connection_budget(settings.max_connections, reserve, nofile)
    if budget < settings.max_connections:
        log.warning("connection cap lowered to fit the descriptor limit", extra={
            "max_connections": settings.max_connections, "effective": budget,
            "rlimit_nofile": nofile, "fd_reserve": reserve})
    return connections.ConnectionGuard(connections.Limits(
        max_connections=budget, max_per_client=settings.max_connections_per_client,
        header_timeout_s=settings.header_timeout_s, body_timeout_s=settings.body_timeout_s,
        send_timeout_s=settings.send_timeout_s))


def server_for(settings: Settings, **uvicorn_options: Any) -> GracefulServer:
    """The server `agentbox serve` and the tests run: uvicorn's h11 protocol with the
    connection guard (api/server/connections.py); no WebSocket upgrades (no route uses them)."""
    app = create_app(settings)
    guard = connection_guard(settings)
    # asyncio's own loop, even where uvloop is installed (uvicorn would pick it): the
    # guard counts an exhausted accept() through asyncio's selector loop
    # (api/server/_compat.py). uvloop was measured 0.3 ms faster per execute, within noise.
    options: dict[str, Any] = {
        "loop": "asyncio", "http": connections.protocol_class(guard), "ws": "none",
        "backlog": settings.accept_backlog,
        "h11_max_incomplete_event_size": settings.max_header_bytes}
    options.update(uvicorn_options)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, lifespan="on", **options)
    return GracefulServer(config, app, guard)
