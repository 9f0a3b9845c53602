"""The service behind the routes: who owns which session, limits, history, metrics.

Routes parse and shape; this object decides. It owns nothing Docker- or
ZMQ-shaped: sessions come from :class:`sandbox.SessionManager`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from api.errors import ApiError
from api.metrics import Metrics
from api.schemas import CreateSession, Limits, SessionOut
from api.settings import Settings
from api.store import HistoryStore
from sandbox import (
    AsyncSession,
    ConfigError,
    ExecutionResult,
    FileInfo,
    ManagerConfig,
    SandboxConfig,
    SessionBusyError,
    SessionManager,
    SessionNotFoundError,
    SessionState,
    make_config,
)
from sandbox._notebook import dumps as notebook_dumps
from sandbox._notebook import to_notebook

log = logging.getLogger("agentbox.api")
_END = object()


@dataclass
class Owned:
    key_id: str
    created_at: float
    limits: dict[str, Any]
    metadata: dict[str, str]
    one_shot: bool = False
    from_pool: bool = False
    session: AsyncSession | None = field(default=None, repr=False)


class SandboxService:
    """Created in the app's lifespan; one per process."""

    def __init__(self, settings: Settings, manager: SessionManager | None = None,
                 store: HistoryStore | None = None) -> None:
        self.settings = settings
        self.defaults = SandboxConfig(execution_timeout_s=settings.default_execution_timeout_s,
                                      max_upload_bytes=settings.max_upload_bytes)
        self.manager = manager or SessionManager(ManagerConfig(
            max_sessions=settings.max_sessions, pool_size=settings.pool_size,
            max_concurrent_starts=settings.max_concurrent_starts,
            start_queue_timeout_s=settings.start_queue_timeout_s,
            idle_timeout_s=settings.default_idle_timeout_s,
            max_lifetime_s=settings.default_lifetime_s,
            reaper_interval_s=settings.reaper_interval_s, session_defaults=self.defaults))
        self.store = store or HistoryStore(settings.resolved_database_url(),
                                           server_id=self.manager.instance_id)
        # A server that has not beaten for this long is taken for dead by the others.
        self.stale_after_s = max(60.0, 6 * settings.reaper_interval_s)
        self.metrics = Metrics()
        self.owned: dict[str, Owned] = {}
        self._janitor: asyncio.Task[None] | None = None
        self.accepting = True

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        await self.store.heartbeat(self.stale_after_s)  # also closes what dead servers left
        await self.manager.start()  # also sweeps what a killed predecessor left
        self._janitor = asyncio.create_task(self._janitor_loop(), name="agentbox-janitor")

    async def shutdown(self) -> None:
        """Stop taking work, end running cells, remove every container, flush history."""
        self.accepting = False
        if self._janitor is not None:
            self._janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._janitor
        await self.manager.shutdown()
        for sid in list(self.owned):
            await self.store.close_session(sid)
        self.owned.clear()
        await self.store.leave()
        self.store.close()

    async def drain(self, grace_s: float = 3.0) -> None:
        """First step of a shutdown: refuse new work; interrupt running cells, and close
        the sessions whose cells do not end within *grace_s*."""
        self.accepting = False
        busy = [o.session for o in self.owned.values()
                if o.session is not None and o.session.state is SessionState.BUSY]
        for session in busy:
            with contextlib.suppress(Exception):
                await session.interrupt()
        deadline = time.monotonic() + grace_s
        while any(s.state is SessionState.BUSY for s in busy) and time.monotonic() < deadline:  # noqa: ASYNC110 - states change in other tasks
            await asyncio.sleep(0.05)
        stuck = [s for s in busy if s.state is SessionState.BUSY]
        await asyncio.gather(*(s.close() for s in stuck), return_exceptions=True)
        if busy:
            log.info("shutdown: interrupted %d running cell(s), closed %d", len(busy),
                     len(stuck))

    async def _janitor_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reaper_interval_s)
            try:
                await self._forget_closed()
                await self.store.heartbeat(self.stale_after_s)
                await self.store.purge_closed_before(time.time()
                                                     - self.settings.notebook_retention_s)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("janitor pass failed")

    async def _forget_closed(self) -> None:
        for sid, owned in list(self.owned.items()):
            if owned.session is None or owned.session.state is SessionState.CLOSED:
                self.owned.pop(sid, None)
                await self.store.close_session(sid)
        self.metrics.sessions_active.set(len(self.owned))
        self.metrics.pool_size.set(self.manager.pool_level)

    # -- sessions --------------------------------------------------------------------
    def _config_for(self, limits: Limits, env: dict[str, str]
                    ) -> tuple[SandboxConfig, float, float]:
        s = self.settings
        caps = {"memory_mb": s.max_memory_mb, "cpus": s.max_cpus, "pids": s.max_pids,
                "execution_timeout_s": s.max_execution_timeout_s,
                "idle_timeout_s": s.max_idle_timeout_s, "max_lifetime_s": s.max_lifetime_s}
        asked = limits.model_dump(exclude_none=True)
        for name, value in asked.items():
            if value > caps[name]:
                raise ApiError(422, "limit_exceeded", f"limits.{name} = {value} exceeds the "
                               f"server's maximum of {caps[name]}")
        changes = {k: v for k, v in asked.items() if k not in ("idle_timeout_s",
                                                                  "max_lifetime_s")}
        try:
            config = make_config({**self.defaults.model_dump(), **changes, "env": env})
        except ConfigError as exc:
            raise ApiError(422, "invalid_settings", str(exc)) from exc
        return (config, asked.get("idle_timeout_s", s.default_idle_timeout_s),
                asked.get("max_lifetime_s", s.default_lifetime_s))

    def _check_capacity(self, key_id: str) -> None:
        if not self.accepting:
            raise ApiError(503, "shutting_down", "the server is shutting down")
        mine = sum(1 for o in self.owned.values() if o.key_id == key_id)
        if mine >= self.settings.max_sessions_per_key:
            raise ApiError(429, "capacity", f"this key already has {mine} sessions, the "
                           f"maximum per key; close one (DELETE /v1/sessions/{{id}})")
        if len(self.owned) >= self.settings.max_sessions:
            raise ApiError(429, "capacity", f"the server runs its maximum of "
                           f"{self.settings.max_sessions} sessions; retry later")

    async def create(self, key_id: str, body: CreateSession, one_shot: bool = False
                     ) -> SessionOut:
        config, idle, lifetime = self._config_for(body.limits, body.env)
        self._check_capacity(key_id)
        session = await self.manager.create(config, idle_timeout_s=idle,
                                            max_lifetime_s=lifetime)
        limits = {"memory_mb": config.memory_mb, "cpus": config.cpus, "pids": config.pids,
                  "execution_timeout_s": config.execution_timeout_s,
                  "idle_timeout_s": idle, "max_lifetime_s": lifetime}
        owned = Owned(key_id=key_id, created_at=session.created_at, limits=limits,
                      metadata=dict(body.metadata), one_shot=one_shot,
                      from_pool=session.from_pool, session=session)
        self.owned[session.id] = owned
        await self.store.add_session(session.id, key_id, limits, owned.metadata, one_shot)
        self.metrics.sessions_active.set(len(self.owned))
        log.info("session created", extra={"session_id": session.id, "key_id": key_id,
                                           "from_pool": session.from_pool,
                                           "start_ms": round(session.phases.get(
                                               "total", 0.0) * 1000, 1)})
        return self.describe(session.id, owned)

    def describe(self, session_id: str, owned: Owned) -> SessionOut:
        status = owned.session.state.value if owned.session else "closed"
        return SessionOut(id=session_id, status=status, created_at=owned.created_at,
                          limits=owned.limits, metadata=owned.metadata,
                          from_pool=owned.from_pool)

    def session(self, key_id: str, session_id: str) -> AsyncSession:
        owned = self.owned.get(session_id)
        if owned is None or owned.key_id != key_id or owned.session is None \
                or owned.session.state is SessionState.CLOSED:
            raise SessionNotFoundError(session_id)  # another key's session: also 404
        return owned.session

    def list_sessions(self, key_id: str, metadata: dict[str, str]) -> list[SessionOut]:
        return [self.describe(sid, o) for sid, o in self.owned.items()
                if o.key_id == key_id and o.session is not None
                and o.session.state is not SessionState.CLOSED
                and all(o.metadata.get(k) == v for k, v in metadata.items())]

    async def delete(self, key_id: str, session_id: str) -> None:
        self.session(key_id, session_id)
        self.owned.pop(session_id, None)
        await self.manager.close(session_id)
        await self.store.close_session(session_id)
        self.metrics.sessions_active.set(len(self.owned))

    # -- execution -------------------------------------------------------------------
    def _check_code(self, code: str, timeout_s: float | None) -> None:
        if len(code.encode("utf-8", "surrogatepass")) > self.settings.max_code_bytes:
            raise ApiError(413, "code_too_large", f"code exceeds {self.settings.max_code_bytes}"
                           " bytes")
        if timeout_s is not None and timeout_s > self.settings.max_execution_timeout_s:
            raise ApiError(422, "limit_exceeded", f"timeout_s = {timeout_s} exceeds the "
                           f"server's maximum of {self.settings.max_execution_timeout_s}")

    async def _record(self, session_id: str, code: str, result: ExecutionResult,
                      started_at: float) -> dict[str, Any]:
        body = result.to_dict()
        await self.store.add_execution(session_id, code, body, started_at)
        self.metrics.record(body)
        log.info("execution", extra={"session_id": session_id, "status": result.status,
                                     "duration_ms": body["duration_ms"],
                                     "truncated": result.truncated})
        return body

    async def execute(self, key_id: str, session_id: str, code: str,
                      timeout_s: float | None) -> dict[str, Any]:
        self._check_code(code, timeout_s)
        session = self.session(key_id, session_id)
        started = time.time()
        result = await session.execute(code, timeout=timeout_s, wait=False)
        return await self._record(session_id, code, result, started)

    async def stream(self, key_id: str, session_id: str, code: str,
                     timeout_s: float | None) -> AsyncIterator[str]:
        """Server-sent events: ``output`` per output as published, then ``result``.
        Raises before the first event for bad input, so errors keep their status."""
        self._check_code(code, timeout_s)
        session = self.session(key_id, session_id)
        if session.busy:
            raise SessionBusyError(session_id)
        return self._events(session, session_id, code, timeout_s)

    async def _events(self, session: AsyncSession, session_id: str, code: str,
                      timeout_s: float | None) -> AsyncIterator[str]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        started = time.time()

        async def pump() -> None:
            try:
                async for event in session.stream(code, timeout=timeout_s, wait=False):
                    await queue.put(event)
            except Exception as exc:
                await queue.put(exc)
            finally:
                await queue.put(_END)

        task = asyncio.create_task(pump())
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), self.settings.keepalive_s)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if item is _END:
                    break
                if isinstance(item, Exception):
                    from api.errors import to_response

                    response = to_response(item)
                    body = json.loads(bytes(response.body))
                    body["error"]["status"] = response.status_code
                    yield f"event: error\ndata: {json.dumps(body)}\n\n"
                    break
                if isinstance(item, ExecutionResult):
                    result = await self._record(session_id, code, item, started)
                    yield f"event: result\ndata: {json.dumps(result)}\n\n"
                else:
                    yield f"event: output\ndata: {json.dumps(item.to_dict())}\n\n"
        finally:
            if not task.done():  # the client went away: the cell is interrupted
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def one_shot(self, key_id: str, code: str, timeout_s: float | None,
                       limits: Limits, env: dict[str, str]) -> dict[str, Any]:
        self._check_code(code, timeout_s)
        out = await self.create(key_id, CreateSession(limits=limits, env=env), one_shot=True)
        try:
            return await self.execute(key_id, out.id, code, timeout_s)
        finally:
            with contextlib.suppress(SessionNotFoundError):
                await self.delete(key_id, out.id)

    # -- history ---------------------------------------------------------------------
    async def notebook(self, key_id: str, session_id: str) -> str:
        row = await self.store.get_session(session_id)
        if row is None or row["key_id"] != key_id:
            raise SessionNotFoundError(session_id)
        history = await self.store.history(session_id)
        cells = [(h["code"], ExecutionResult.from_dict(h["result"])) for h in history]
        nb = to_notebook(cells, metadata={"agentbox": {
            "session": session_id, "created_at": row["created_at"],
            "closed_at": row["closed_at"], "metadata": row["metadata"]}})
        return notebook_dumps(nb)

    # -- files -----------------------------------------------------------------------
    async def upload(self, key_id: str, session_id: str, path: str, data: bytes) -> None:
        await self.session(key_id, session_id).upload(path, data)

    async def download(self, key_id: str, session_id: str, path: str) -> bytes:
        return await self.session(key_id, session_id).download(path)

    async def list_files(self, key_id: str, session_id: str, path: str = "") -> list[FileInfo]:
        return await self.session(key_id, session_id).list_files(path)

    async def delete_file(self, key_id: str, session_id: str, path: str) -> None:
        await self.session(key_id, session_id).delete_file(path)
