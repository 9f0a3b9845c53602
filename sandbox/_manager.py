"""The SessionManager: every session of one process, its pool, and the reaper.

- ``create()`` serves from the warm pool when the settings are the defaults,
  else starts cold; refuses with :class:`CapacityError` past ``max_sessions``.
- A background reaper closes sessions idle longer than ``idle_timeout_s`` or
  older than ``max_lifetime_s``, and removes what dead managers left behind.
- Leftovers are found by labels: every container carries the owning process's
  pid and host name, and the path of its run directory. A container whose
  owner process is gone (on this host) is an orphan; so is a run directory no
  container names. :func:`collect_garbage` (``agentbox gc``) does the same pass
  by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from sandbox._config import ManagerConfig, SandboxConfig
from sandbox._exceptions import CapacityError, SandboxError, SessionNotFoundError
from sandbox._pool import WarmPool
from sandbox._rundir import remove_run_dir
from sandbox._runtime.base import (
    LABEL_APP,
    LABEL_HOST,
    LABEL_MANAGER,
    LABEL_OWNER_PID,
    LABEL_RUN_DIR,
    Runtime,
)
from sandbox._session import AsyncSession, SessionState

log = logging.getLogger("sandbox.manager")

ORPHAN_DIR_MIN_AGE_S = 120.0  # a run dir this young may belong to a session still starting


@dataclass(frozen=True)
class GarbageReport:
    containers: int
    directories: int


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def sweep_orphans(runtime: Runtime, run_root: Path, *,
                        only_dead_owners: bool = True) -> GarbageReport:
    """Remove containers of dead owners on this host, containers whose session closed
    without removing them, and run dirs no container names."""
    host = socket.gethostname()
    containers = await runtime.list({LABEL_APP: "agentbox"})
    removed = 0
    claimed_dirs: set[str] = set()
    for c in containers:
        owner = c.labels.get(LABEL_OWNER_PID, "")
        same_host = c.labels.get(LABEL_HOST, host) == host
        run_dir_label = c.labels.get(LABEL_RUN_DIR, "")
        # A live owner's session removes its run dir only as the last step of closing
        # (and creates it before the container), so a container of ours whose run dir is
        # gone is one that close() could not remove (an engine outage) or whose start
        # was abandoned before the engine answered: an orphan too.
        closed = same_host and _run_dir_gone(run_dir_label, run_root)
        orphan = (same_host and owner.isdigit() and not pid_alive(int(owner))) \
            or closed or not only_dead_owners
        if orphan:
            try:
                await runtime.remove(c.id)
                removed += 1
            except SandboxError as exc:
                log.warning("could not remove orphan container %s: %s", c.id[:12], exc)
                claimed_dirs.add(c.labels.get(LABEL_RUN_DIR, ""))
            else:
                run_dir = c.labels.get(LABEL_RUN_DIR)
                if run_dir and Path(run_dir).parent == run_root:
                    remove_run_dir(run_dir)
        else:
            claimed_dirs.add(c.labels.get(LABEL_RUN_DIR, ""))
    dirs = await asyncio.to_thread(_sweep_dirs, run_root, claimed_dirs, only_dead_owners)
    return GarbageReport(removed, dirs)


def _run_dir_gone(label: str, run_root: Path) -> bool:
    """Whether a container's run dir (its label) was one of ours and has been removed."""
    return bool(label) and Path(label).parent == run_root and not os.path.lexists(label)


def _sweep_dirs(run_root: Path, claimed: set[str], only_dead_owners: bool) -> int:
    """Remove session run dirs that no container claims (and that are not brand new)."""
    if not run_root.is_dir():
        return 0
    dirs = 0
    now = time.time()
    for child in run_root.iterdir():
        if not child.name.startswith("s-") or str(child) in claimed:
            continue
        try:
            age = now - child.stat().st_mtime
        except OSError:
            continue
        if age >= ORPHAN_DIR_MIN_AGE_S or not only_dead_owners:
            remove_run_dir(child)
            dirs += 1
    return dirs


def collect_garbage(run_root: Path | None = None) -> GarbageReport:
    """``agentbox gc``: one orphan sweep, synchronously."""
    from sandbox._config import default_base_dir
    from sandbox._runtime.docker import DockerRuntime

    async def sweep() -> GarbageReport:
        runtime = DockerRuntime()
        try:
            return await sweep_orphans(runtime, run_root or default_base_dir())
        finally:
            await runtime.close()

    return asyncio.run(sweep())


class SessionManager:
    """Owns sessions. ``async with SessionManager(ManagerConfig(pool_size=2)) as m:``."""

    def __init__(self, config: ManagerConfig | None = None, *,
                 runtime: Runtime | None = None) -> None:
        self.config = config or ManagerConfig()
        if runtime is None:
            from sandbox._runtime.docker import default_runtime

            runtime = default_runtime()
        self.runtime = runtime
        self.instance_id = self.config.instance_id or f"m-{secrets.token_hex(4)}"
        self._sessions: dict[str, AsyncSession] = {}
        self._starting = 0
        self._pool = WarmPool(self.config.pool_size, self._new_pooled)
        self._reaper: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False
        self.reaped = 0

    # -- lifecycle -------------------------------------------------------------------
    async def __aenter__(self) -> SessionManager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def start(self) -> None:
        """Sweep leftovers of dead managers, then start the reaper and the pool."""
        if self._started:
            return
        self._started = True
        self.config.run_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        report = await sweep_orphans(self.runtime, self.config.run_root)
        if report.containers or report.directories:
            log.info("removed %d orphan container(s), %d directory(ies)", report.containers,
                     report.directories)
        self._reaper = asyncio.create_task(self._reap_forever(), name="agentbox-reaper")
        self._pool.start()

    async def shutdown(self) -> None:
        """Close every session and the pool. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await self._pool.close()
        sessions = list(self._sessions.values())
        self._sessions.clear()
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)

    # -- sessions --------------------------------------------------------------------
    def _labels(self) -> dict[str, str]:
        return {LABEL_MANAGER: self.instance_id}

    def _new_session(self, config: SandboxConfig) -> AsyncSession:
        return AsyncSession(config, runtime=self.runtime, run_root=self.config.run_root,
                            labels=self._labels())

    async def _new_pooled(self) -> AsyncSession:
        session = self._new_session(self.config.session_defaults)
        return await session.start()

    @property
    def pool_level(self) -> int:
        return self._pool.level

    async def create(self, config: SandboxConfig | None = None, *,
                     idle_timeout_s: float | None = None,
                     max_lifetime_s: float | None = None) -> AsyncSession:
        """A started session: from the pool when *config* is the default, else cold.

        *idle_timeout_s* / *max_lifetime_s* override the manager's for this session."""
        session = await self._create(config)
        session.idle_timeout_s = idle_timeout_s
        session.max_lifetime_s = max_lifetime_s
        return session

    async def _create(self, config: SandboxConfig | None) -> AsyncSession:
        if self._closed:
            raise SandboxError("the session manager is shut down")
        if not self._started:
            await self.start()
        config = config or self.config.session_defaults
        if len(self._sessions) + self._starting >= self.config.max_sessions:
            raise CapacityError(self.config.max_sessions)
        t0 = time.monotonic()
        if config == self.config.session_defaults:
            pooled = self._pool.take()
            if pooled is not None:
                pooled.phases["pool_acquire"] = time.monotonic() - t0
                pooled.last_used = time.monotonic()
                self._sessions[pooled.id] = pooled
                return pooled
        self._starting += 1
        try:
            session = await self._new_session(config).start()
        finally:
            self._starting -= 1
        if self._closed:
            await session.close()
            raise SandboxError("the session manager shut down while the session started")
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str) -> AsyncSession:
        session = self._sessions.get(session_id)
        if session is None or session.state is SessionState.CLOSED:
            raise SessionNotFoundError(session_id)
        return session

    def list(self) -> list[AsyncSession]:
        return [s for s in self._sessions.values() if s.state is not SessionState.CLOSED]

    async def close(self, session_id: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is None:
            raise SessionNotFoundError(session_id)
        await session.close()

    # -- reaper ----------------------------------------------------------------------
    async def reap_once(self) -> int:
        """Close idle and over-age sessions; sweep orphans. Returns sessions closed."""
        now = time.monotonic()
        doomed = []
        for sid, s in list(self._sessions.items()):
            if s.state is SessionState.CLOSED:
                self._sessions.pop(sid, None)
                continue
            idle = s.idle_timeout_s or self.config.idle_timeout_s
            life = s.max_lifetime_s or self.config.max_lifetime_s
            busy = s.state is SessionState.BUSY
            if (life is not None and now - s.started_monotonic > life) or \
                    (idle is not None and not busy and now - s.last_used > idle):
                doomed.append(sid)
        for sid in doomed:
            session = self._sessions.pop(sid, None)
            if session is not None:
                log.info("reaping session %s", sid)
                await session.close()
        self.reaped += len(doomed)
        with contextlib.suppress(SandboxError):
            await sweep_orphans(self.runtime, self.config.run_root)
        return len(doomed)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.reaper_interval_s)
            try:
                await self.reap_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reaper pass failed")
