"""The SessionManager: every session of one process, its pool, and the reaper.

- ``create()`` serves from the warm pool when the settings are the defaults,
  else starts cold; refuses with :class:`CapacityError` past ``max_sessions``.
- At most ``max_concurrent_starts`` cold starts run at once (a burst of starts on
  a few cores would all miss their deadlines together); the rest wait in line,
  first come first served, each for at most ``start_queue_timeout_s``. A create
  whose expected wait is longer than that is refused at once with
  :class:`StartQueueFullError` (its ``retry_after_s`` says when to come back),
  and one still in line at its deadline is refused then. A start's own deadline
  (``start_timeout_s``) counts from when it leaves the line. Every failed start
  is logged, one line, with the session id and the phase it failed in.
- A background reaper closes sessions idle longer than ``idle_timeout_s`` or
  older than ``max_lifetime_s``, and removes what dead managers left behind.
- Leftovers of dead owners are swept at start and with every reaper pass
  (:mod:`sandbox._gc`, also ``agentbox gc``).

The start line is :class:`~sandbox._start_gate.StartGate`; the names that lived here
before (``sweep_orphans``, ``collect_garbage``, ``pid_alive``, ``StartGate``,
``StartQueueFullError``, ...) are still importable from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time

from sandbox._config import ManagerConfig, SandboxConfig
from sandbox._exceptions import (
    CapacityError,
    SandboxError,
    SessionNotFoundError,
    SessionStartError,
    StartQueueFullError,
)
from sandbox._gc import sweep_orphans
from sandbox._pool import WarmPool
from sandbox._runtime.base import LABEL_MANAGER, Runtime
from sandbox._session import AsyncSession, SessionState
from sandbox._start_gate import LineTooLong, StartGate
from sandbox._tasks import cancel_and_wait

__all__ = ["SessionManager"]

log = logging.getLogger("sandbox.manager")


class SessionManager:
    """Owns sessions. ``async with SessionManager(ManagerConfig(pool_size=2)) as m:``."""

    def __init__(self, config: ManagerConfig | None = None, *,
                 runtime: Runtime | None = None) -> None:
        self.config = config or ManagerConfig()
        if runtime is None:
            from sandbox._runtime.dockerd import default_runtime

            runtime = default_runtime()
        self.runtime = runtime
        self.instance_id = self.config.instance_id or f"m-{secrets.token_hex(4)}"
        self._sessions: dict[str, AsyncSession] = {}
        self._starting = 0  # in line for a start slot or starting
        self.starts = StartGate(self.config.max_concurrent_starts)
        self.failed_starts = 0
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
        self.starts.close(SessionStartError("the session manager is shutting down; nothing "
                                            "more is started"))
        await cancel_and_wait(self._reaper)
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
        return await self._start(session, background=True)

    async def _start(self, session: AsyncSession, *, background: bool = False) -> AsyncSession:
        """Start *session* once a start slot is free. Callers wait at most
        ``start_queue_timeout_s`` in line; the pool's refills wait behind them for as
        long as it takes. The session's own start deadline begins with its start."""
        queued = time.monotonic()
        if background:
            await self.starts.acquire(background=True)
        else:
            await self._wait_for_slot(session)
        began = time.monotonic()
        session.phases["queue"] = began - queued
        try:
            if self._closed:
                raise SessionStartError("the session manager shut down while the session "
                                        "waited for a start slot", session_id=session.id)
            return await session.start()
        except asyncio.CancelledError:
            log.info("session %s: start cancelled by its caller", session.id,
                     extra={"session_id": session.id, "phase": self._phase_of(session)})
            raise
        except Exception as exc:
            self._log_failed_start(session, self._phase_of(session), exc,
                                   time.monotonic() - queued)
            raise
        finally:
            self.starts.release(time.monotonic() - began)

    async def _wait_for_slot(self, session: AsyncSession) -> None:
        gate, limit = self.starts, self.config.start_queue_timeout_s
        queued = time.monotonic()
        expected = gate.expected_wait_s()
        if expected > limit:
            self._refuse(session, queued, f"{gate.waiting} start(s) are waiting for "
                         f"{gate.slots} start slot(s) already; the expected wait of "
                         f"{expected:.1f}s is longer than start_queue_timeout_s ({limit:g}s)",
                         expected - limit)
        try:
            await gate.acquire(queued + limit)
        except TimeoutError:
            self._refuse(session, queued, f"waited {limit:g}s (start_queue_timeout_s) in line "
                         f"for one of {gate.slots} start slot(s) without getting one",
                         gate.expected_wait_s() - limit)
        except LineTooLong as exc:
            self._refuse(session, queued, f"after {time.monotonic() - queued:.1f}s in line, "
                         f"starts take {gate.typical_s:.1f}s each on {gate.slots} slot(s): it "
                         f"would wait {exc.wait_s:.1f}s more, past its start_queue_timeout_s "
                         f"({limit:g}s)", gate.expected_wait_s() - limit)
        except SessionStartError as exc:  # the manager shut down while it waited
            self._log_failed_start(session, "queue", exc, time.monotonic() - queued)
            raise

    def _refuse(self, session: AsyncSession, queued: float, why: str,
                retry_after_s: float) -> None:
        retry = float(max(1, math.ceil(retry_after_s)))
        exc = StartQueueFullError(f"session {session.id} was not started: too many sessions "
                                  f"are starting at once: {why}; retry in {retry:g}s",
                                  session_id=session.id, retry_after_s=retry)
        self._log_failed_start(session, "queue", exc, time.monotonic() - queued)
        raise exc

    @staticmethod
    def _phase_of(session: AsyncSession) -> str:
        """Where a start stopped: still in line (never begun), the engine's part (create
        and start the container) or the kernel's (connect, first answer)."""
        if session.state is SessionState.NEW:
            return "queue"
        return "kernel" if "container_start" in session.phases else "container"

    def _log_failed_start(self, session: AsyncSession, phase: str, exc: BaseException,
                          elapsed_s: float) -> None:
        self.failed_starts += 1
        reason = str(exc)
        for said in (f"session {session.id} did not start: ",
                     f"session {session.id} was not started: "):
            reason = reason.removeprefix(said)  # the line names the session already
        log.warning("session %s did not start (phase %s, after %.1fs): %s", session.id, phase,
                    elapsed_s, reason, extra={"session_id": session.id, "phase": phase})

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
            raise SessionStartError("the session manager is shut down")
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
            session = await self._start(self._new_session(config))
        finally:
            self._starting -= 1
        if self._closed:
            await session.close()
            raise SessionStartError("the session manager shut down while the session started",
                                    session_id=session.id)
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
