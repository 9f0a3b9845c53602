"""The service behind the routes: who owns which session, limits, history, metrics.

Routes parse and shape; this object decides. It owns nothing Docker- or
ZMQ-shaped: sessions come from :class:`sandbox.SessionManager`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread

from api.server.errors import ApiError
from api.server.execution import Executions
from api.server.export import ExportFailed, export_in_child, in_child_process
from api.server.export import build as build_export
from api.server.metrics import Metrics
from api.server.schemas import CreateSession, Limits, SessionOut
from api.server.settings import Settings
from api.server.store import HistoryStore
from sandbox import (
    AsyncSession,
    ConfigError,
    FileInfo,
    FileOperationError,
    ManagerConfig,
    SandboxConfig,
    SandboxError,
    SessionBusyError,
    SessionManager,
    SessionNotFoundError,
    SessionState,
    make_config,
)
from sandbox.utils import cancel_and_wait

log = logging.getLogger("agentbox.api")
# Retry-After (seconds) on refusals that a later retry can pass: a full server or key
# frees a place when a session is closed or reaped; a stopping server is replaced.
RETRY_CAPACITY_S = 5
RETRY_SHUTDOWN_S = 10
# Address space of a notebook export's child process: the interpreter and libraries,
# plus eight times the stored results it may read (decoded rows, cells, the encoding).
EXPORT_MEMORY_BASE = 1024 * 1024 * 1024


@dataclass
class Owned:
    key_id: str
    created_at: float
    limits: dict[str, Any]
    metadata: dict[str, str]
    one_shot: bool = False
    from_pool: bool = False
    session: AsyncSession | None = field(default=None, repr=False)


class SandboxService(Executions):
    """Created in the app's lifespan; one per process."""

    def __init__(self, settings: Settings, manager: SessionManager | None = None,
                 store: HistoryStore | None = None) -> None:
        self.settings = settings
        self.defaults = SandboxConfig(execution_timeout_s=settings.default_execution_timeout_s,
                                      max_upload_bytes=settings.max_upload_bytes,
                                      file_timeout_s=settings.file_timeout_s)
        self.manager = manager or SessionManager(ManagerConfig(
            max_sessions=settings.max_sessions, pool_size=settings.pool_size,
            max_concurrent_starts=settings.max_concurrent_starts,
            start_queue_timeout_s=settings.start_queue_timeout_s,
            idle_timeout_s=settings.default_idle_timeout_s,
            max_lifetime_s=settings.default_lifetime_s,
            reaper_interval_s=settings.reaper_interval_s, session_defaults=self.defaults))
        self.store = store or HistoryStore(
            settings.resolved_database_url(), server_id=self.manager.instance_id,
            max_execution_bytes=settings.history_max_execution_bytes,
            max_key_bytes=settings.history_max_bytes_per_key)
        # Event-stream pumps (each runs its cell to the end and records it, whether or
        # not the client still reads), and the turns for notebook exports.
        self._pumps: set[asyncio.Task[Any]] = set()
        self._exports = anyio.CapacityLimiter(settings.notebook_export_concurrency)
        # A server that has not beaten for this long is taken for dead by the others.
        self.stale_after_s = max(60.0, 6 * settings.reaper_interval_s)
        self.metrics = Metrics()
        self.owned: dict[str, Owned] = {}
        # Creates that passed the capacity check and have not yet become an Owned (their
        # container is starting): counted against the key and the server at once, so
        # concurrent creates cannot all pass the check before any of them is recorded.
        self.reserved: Counter[str] = Counter()
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
        await cancel_and_wait(self._janitor)
        await self.manager.shutdown()
        await self._wait_pumps(10.0)  # their cells ended with the sessions: record them
        for sid in list(self.owned):
            await self.store.close_session(sid)
        self.owned.clear()
        await self.store.leave()
        self.store.close()

    async def _wait_pumps(self, timeout_s: float) -> None:
        if self._pumps:
            _, late = await asyncio.wait(set(self._pumps), timeout=timeout_s)
            for task in late:
                task.cancel()

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

    def _live(self) -> list[Owned]:
        """Owned sessions that still hold a container (a reaped one waits for the janitor
        to forget it, but no longer counts against anyone's cap)."""
        return [o for o in self.owned.values()
                if o.session is not None and o.session.state is not SessionState.CLOSED]

    def _check_capacity(self, key_id: str) -> None:
        if not self.accepting:
            raise ApiError(503, "shutting_down", "the server is shutting down",
                           headers={"Retry-After": str(RETRY_SHUTDOWN_S)})
        live = self._live()
        mine = sum(1 for o in live if o.key_id == key_id) + self.reserved[key_id]
        if mine >= self.settings.max_sessions_per_key:
            raise ApiError(429, "capacity", f"this key already has {mine} sessions (open or "
                           f"starting), the maximum per key; close one "
                           f"(DELETE /v1/sessions/{{id}})",
                           headers={"Retry-After": str(RETRY_CAPACITY_S)})
        if len(live) + self.reserved.total() >= self.settings.max_sessions:
            raise ApiError(429, "capacity", f"the server runs its maximum of "
                           f"{self.settings.max_sessions} sessions (open or starting); "
                           "retry later", headers={"Retry-After": str(RETRY_CAPACITY_S)})

    @contextlib.contextmanager
    def _reservation(self, key_id: str) -> Iterator[None]:
        """Check the caps and hold a place for one session of *key_id* until the block
        ends. Check and count happen in one step of the event loop (no await between),
        so the caps hold exactly under any concurrency; a failed or cancelled start
        gives its place back."""
        self._check_capacity(key_id)
        self.reserved[key_id] += 1
        try:
            yield
        finally:
            self.reserved[key_id] -= 1
            if self.reserved[key_id] <= 0:
                del self.reserved[key_id]

    async def create(self, key_id: str, body: CreateSession, one_shot: bool = False
                     ) -> SessionOut:
        config, idle, lifetime = self._config_for(body.limits, body.env)
        with self._reservation(key_id):
            session = await self.manager.create(config, idle_timeout_s=idle,
                                                max_lifetime_s=lifetime)
            limits = {"memory_mb": config.memory_mb, "cpus": config.cpus, "pids": config.pids,
                      "execution_timeout_s": config.execution_timeout_s,
                      "idle_timeout_s": idle, "max_lifetime_s": lifetime}
            owned = Owned(key_id=key_id, created_at=session.created_at, limits=limits,
                          metadata=dict(body.metadata), one_shot=one_shot,
                          from_pool=session.from_pool, session=session)
            # Recorded before the reservation is given back (no await in between).
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

    def get(self, key_id: str, session_id: str) -> SessionOut:
        self.session(key_id, session_id)
        return self.describe(session_id, self.owned[session_id])

    def _owned_after(self, key_id: str, session_id: str) -> SessionOut:
        """The session's description after an await: a delete (or the reaper) may have
        taken it meanwhile, which is a 404 like any other closed session."""
        owned = self.owned.get(session_id)
        if owned is None or owned.key_id != key_id or owned.session is None \
                or owned.session.state is SessionState.CLOSED:
            raise SessionNotFoundError(session_id)
        return self.describe(session_id, owned)

    @contextlib.contextmanager
    def _unless_cut(self, session_id: str, session: AsyncSession, *,
                    by_restart: bool = True) -> Iterator[None]:
        """An operation cut short by another route on the same session says so: a 404
        when a delete (or the reaper) closed the session while it ran, a 409 when a
        restart ended every process in the box under it (*by_restart*: not for the
        restart itself, whose own failure is its own answer); not whatever the vanished
        container or killed file helper made of it (a 400 "failed", an engine 500)."""
        generation = session.generation
        try:
            yield
        except (SessionNotFoundError, SessionBusyError, ApiError):
            raise
        except SandboxError as exc:
            if session.state is SessionState.CLOSED or session_id not in self.owned:
                raise SessionNotFoundError(session_id) from exc
            generic = not isinstance(exc, FileOperationError) or exc.code == "failed"
            if by_restart and generic and (session.restarting
                                           or session.generation != generation):
                raise ApiError(409, "session_restarting", f"session {session_id} was "
                               "restarted while this operation ran (a restart ends every "
                               "process in the box); retry it") from exc
            raise

    async def restart(self, key_id: str, session_id: str) -> SessionOut:
        session = self.session(key_id, session_id)
        with self._unless_cut(session_id, session, by_restart=False):
            await session.restart()
        return self._owned_after(key_id, session_id)

    async def interrupt(self, key_id: str, session_id: str) -> None:
        session = self.session(key_id, session_id)
        with self._unless_cut(session_id, session):
            await session.interrupt()

    async def delete(self, key_id: str, session_id: str) -> None:
        session = self.session(key_id, session_id)
        # Taken from the table first, in the same step as the check: a second delete,
        # or any other route, from now on gets 404.
        self.owned.pop(session_id, None)
        try:
            await self.manager.close(session_id)
        except SessionNotFoundError:
            await session.close()  # the reaper took it from the manager first
        finally:
            await self.store.close_session(session_id)
            self.metrics.sessions_active.set(len(self.owned))

    # -- execution (execute and stream: api/server/execution.py) ----------------------
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
    async def notebook(self, key_id: str, session_id: str) -> bytes:
        """The session's history as an .ipynb, built in a child process (api/server/export.py),
        a few at once (the rest wait for a turn): reading, converting and encoding a
        large history is seconds of CPU that would otherwise stall every session."""
        row = await self.store.get_session(session_id)
        if row is None or row["key_id"] != key_id:
            raise SessionNotFoundError(session_id)
        meta = {"agentbox": {"session": session_id, "created_at": row["created_at"],
                             "closed_at": row["closed_at"], "metadata": row["metadata"]}}
        s = self.settings
        async with self._exports:
            try:
                if in_child_process(self.store.url):
                    return await export_in_child(
                        self.store.url, session_id, meta, max_bytes=s.notebook_max_bytes,
                        max_outputs=s.notebook_max_outputs,
                        timeout_s=s.notebook_export_timeout_s,
                        memory_bytes=EXPORT_MEMORY_BASE + 8 * s.notebook_max_bytes)
                body: bytes = await anyio.to_thread.run_sync(
                    lambda: b"".join(build_export(self.store.engine, session_id, meta,
                                                  s.notebook_max_bytes,
                                                  s.notebook_max_outputs)))
                return body
            except ExportFailed as exc:
                log.warning("notebook export failed", extra={"session_id": session_id,
                                                             "reason": str(exc)})
                raise ApiError(503, "export_failed", f"the notebook could not be built: "
                               f"{exc}", headers={"Retry-After": str(RETRY_CAPACITY_S)}
                               ) from exc

    # -- files -----------------------------------------------------------------------
    async def upload(self, key_id: str, session_id: str, path: str,
                     data: bytes | AsyncIterator[bytes]) -> None:
        session = self.session(key_id, session_id)
        with self._unless_cut(session_id, session):
            await session.upload(path, data)

    async def download(self, key_id: str, session_id: str, path: str) -> bytes:
        session = self.session(key_id, session_id)
        with self._unless_cut(session_id, session):
            return await session.download(path)

    async def list_files(self, key_id: str, session_id: str, path: str = "") -> list[FileInfo]:
        session = self.session(key_id, session_id)
        with self._unless_cut(session_id, session):
            return await session.list_files(path)

    async def delete_file(self, key_id: str, session_id: str, path: str) -> None:
        session = self.session(key_id, session_id)
        with self._unless_cut(session_id, session):
            await session.delete_file(path)
