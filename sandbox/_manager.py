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
import math
import os
import secrets
import socket
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from sandbox._config import ManagerConfig, SandboxConfig
from sandbox._exceptions import (
    CapacityError,
    SandboxError,
    SessionNotFoundError,
    SessionStartError,
)
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
# What a start is taken to cost before one has been measured (runc here: ~1-2 s).
TYPICAL_START_SEED_S = 2.0


class StartQueueFullError(SessionStartError):
    """Too many sessions are starting: this one would have waited in line for a start
    slot longer than ``start_queue_timeout_s`` (or did). Nothing was started;
    ``retry_after_s`` is when a retry can expect to get through."""

    def __init__(self, message: str, *, session_id: str, retry_after_s: float) -> None:
        super().__init__(message, session_id=session_id)
        self.retry_after_s = retry_after_s


class LineTooLong(Exception):
    """A caller in line cannot get a slot before its deadline, as far as the gate can
    tell now that it has measured more starts: it is told at once, not at its deadline."""

    def __init__(self, wait_s: float) -> None:
        super().__init__(f"{wait_s:.1f}s")
        self.wait_s = wait_s


class StartGate:
    """At most *slots* session starts at once; the rest wait in line, first come first
    served, each until its own deadline. Background starts (pool refills) wait behind
    every caller. Also keeps a moving average of how long a start holds its slot, so
    that a caller can be told at once when its wait would be too long, and a caller in
    line is told as soon as the measured starts say it cannot make its deadline."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.active = 0
        self.typical_s = TYPICAL_START_SEED_S
        # (turn, deadline): a turn's result is the slot; its exception, a refusal.
        self._line: deque[tuple[asyncio.Future[None], float | None]] = deque()
        self._background: deque[tuple[asyncio.Future[None], float | None]] = deque()

    @property
    def waiting(self) -> int:
        """Callers in line (not counting background starts)."""
        return sum(1 for turn, _ in self._line if not turn.done())

    def expected_wait_s(self) -> float:
        """How long a caller who joins the line now can expect to wait for a slot: every
        caller ahead of it, and then itself, needs a start to end first."""
        if self.active < self.slots and not self.waiting:
            return 0.0
        return (self.waiting + 1) * self.typical_s / self.slots

    async def acquire(self, deadline: float | None = None, *, background: bool = False) -> None:
        """Wait for a slot until *deadline* (monotonic; None: no limit). TimeoutError when
        the deadline passes first, LineTooLong when it clearly will; the caller must
        :meth:`release` a slot it got."""
        ahead = self.waiting > 0 or (background and any(not t.done() for t, _ in self._background))
        if self.active < self.slots and not ahead:
            self.active += 1
            return
        line = self._background if background else self._line
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (turn, deadline)
        line.append(entry)
        try:
            async with asyncio.timeout_at(deadline):
                await turn
        except BaseException:
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                self._hand_on()  # given the slot in the same instant it gave up
            with contextlib.suppress(ValueError):
                line.remove(entry)
            raise

    def close(self, exc: BaseException) -> None:
        """Fail everyone in line with *exc* (the manager is shutting down)."""
        for line in (self._line, self._background):
            while line:
                turn, _ = line.popleft()
                if not turn.done():
                    turn.set_exception(exc)

    def release(self, held_s: float) -> None:
        """Give a slot back after holding it for *held_s* seconds."""
        self.typical_s = 0.7 * self.typical_s + 0.3 * max(0.0, held_s)
        self._hand_on()
        self._refuse_hopeless()

    def _hand_on(self) -> None:
        # The slot goes straight to the next in line (so nobody can overtake the line
        # between a release and the waiter's wake-up); without one it is freed.
        for line in (self._line, self._background):
            while line:
                turn, _ = line.popleft()
                if not turn.done():
                    turn.set_result(None)
                    return
        self.active -= 1

    def _refuse_hopeless(self) -> None:
        """Tell the callers in line who cannot get a slot before their deadline, at the
        pace starts go now. Optimistic on purpose (the one at the head is never told:
        the next slot is its own), so that nobody is refused who would have made it."""
        now, position = time.monotonic(), 0
        for turn, deadline in list(self._line):
            if turn.done():
                continue
            wait = position * self.typical_s / self.slots
            position += 1
            if deadline is not None and now + wait > deadline:
                turn.set_exception(LineTooLong(wait))


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
                        only_dead_owners: bool = True,
                        engine_wide: bool = False) -> GarbageReport:
    """Remove containers of dead owners on this host, containers whose session closed
    without removing them, and run dirs no container names.

    Only containers whose run dir (their label) lies under *run_root* are considered:
    another user's or another tool's Agent Box containers on the same engine are theirs
    to sweep, even when their owner pid is not alive here (``engine_wide`` lifts that,
    for ``agentbox gc --all``)."""
    host = socket.gethostname()
    containers = await runtime.list({LABEL_APP: "agentbox"})
    removed = 0
    claimed_dirs: set[str] = set()
    for c in containers:
        owner = c.labels.get(LABEL_OWNER_PID, "")
        same_host = c.labels.get(LABEL_HOST, host) == host
        run_dir_label = c.labels.get(LABEL_RUN_DIR, "")
        if not engine_wide and not (run_dir_label and Path(run_dir_label).parent == run_root):
            continue
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


def collect_garbage(run_root: Path | None = None, *, engine_wide: bool = False) -> GarbageReport:
    """``agentbox gc``: one orphan sweep, synchronously (``--all``: *engine_wide*)."""
    from sandbox._config import default_base_dir
    from sandbox._runtime.docker import DockerRuntime

    async def sweep() -> GarbageReport:
        runtime = DockerRuntime()
        try:
            return await sweep_orphans(runtime, run_root or default_base_dir(),
                                       engine_wide=engine_wide)
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
