"""A session: one box (a hardened container and its init), the IPython kernel in it
driven over ZMQ, and its cell runs over time, behind one lock and one state machine.

Lifecycle (``session.state``)::

    new ──start──▶ starting ──▶ ready ◀──▶ busy
                      │           │  ▲        │ kernel exits / container dies
                      ▼           ▼  └─recover┘──────▶ dead
                    closed ◀───close (from any state; idempotent)

Executions run one at a time: a second ``execute`` on the same session waits
for its turn (first come, first served); pass ``wait=False`` to get
:class:`SessionBusyError` at once instead.

The container and its init are a :class:`~sandbox._box.Box`, the kernel in it a
:class:`~sandbox._slot.KernelSlot`; one execution is a :class:`~sandbox._cell.CellRun`
(its deadline, and the interrupt → restart → replace ladder over its time limit), which
sees the session through :class:`~sandbox._session_cells.CellBox`; a cell whose caller
left is ended in the background (:class:`~sandbox._session_cells.Abandoned`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
import time
import weakref
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

from sandbox._box import Box, box_labels
from sandbox._cell import CellRun, check_cell
from sandbox._config import SandboxConfig, default_base_dir
from sandbox._exceptions import (
    EngineUnavailableError,
    ImageError,
    SandboxError,
    SessionBusyError,
    SessionClosedError,
    SessionLostError,
    SessionStartError,
)
from sandbox._files import FileOps
from sandbox._init_client import InitClient
from sandbox._kernel import KernelConnection
from sandbox._models import ExecutionResult, KernelDeath, SessionInfo
from sandbox._outputs import Event
from sandbox._rundir import remove_run_dir
from sandbox._runtime.base import Runtime
from sandbox._session_cells import Abandoned, CellBox
from sandbox._session_files import SessionFiles
from sandbox._slot import KernelSlot
from sandbox._tasks import run_to_end
from sandbox._uids import for_session

log = logging.getLogger("sandbox.session")


class SessionState(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    DEAD = "dead"
    CLOSED = "closed"


class AsyncSession(SessionFiles):
    """One sandbox. Create with ``async with AsyncSession() as s:`` or ``await s.start()``."""

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        runtime: Runtime | None = None,
        session_id: str | None = None,
        run_root: Path | None = None,
        labels: dict[str, str] | None = None,
    ) -> None:
        from sandbox._image import image_tag

        # A host uid of the session's own (sandbox/_uids.py), released with the session.
        self.config, self._uid_lease = for_session(config or SandboxConfig())
        if self._uid_lease is not None:
            weakref.finalize(self, self._uid_lease.release)  # never started, never closed
        if runtime is None:
            from sandbox._runtime.dockerd import default_runtime

            runtime = default_runtime()
        self.runtime = runtime
        self.id = session_id or f"s-{secrets.token_hex(6)}"
        self.image = self.config.image or image_tag()
        self.run_dir = Path(run_root or default_base_dir()) / self.id
        self.labels = box_labels(self.id, self.run_dir, labels)
        self.created_at = time.time()
        self.last_used = time.monotonic()
        self.started_monotonic = time.monotonic()
        self.phases: dict[str, float] = {}
        self.from_pool = False
        self.executions = 0
        # Per-session overrides of the manager's reaper limits (None: the manager's).
        self.idle_timeout_s: float | None = None
        self.max_lifetime_s: float | None = None

        self._state = SessionState.NEW
        self._exec_lock = asyncio.Lock()
        self._life_lock = asyncio.Lock()
        self._box = Box(runtime, self.config, self.run_dir, name=self.id, image=self.image,
                        labels=self.labels)
        # The box's current kernel; KernelConnection is looked up here at each start, so
        # that a benchmark can swap the transport (bench/bench_tuning.py).
        self._slot = KernelSlot(self._box, self.config, self.run_dir,
                                lambda *a, **kw: KernelConnection(*a, **kw), self._died)
        self._death: KernelDeath | None = None
        self._active_msg: str | None = None
        self._files = FileOps(self.runtime, self.config, self._container_for_files)
        self._abandoned = Abandoned(self.id)

    # -- properties ----------------------------------------------------------------
    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def container_id(self) -> str | None:
        return self._box.container_id

    @property
    def busy(self) -> bool:
        """Whether an execution is running (or queued) on this session."""
        return self._exec_lock.locked()

    @property
    def generation(self) -> int:
        """Kernels started so far (a restart or a replaced container adds one): an
        operation that saw it change was cut short by a restart."""
        return self._slot.generation

    @property
    def restarting(self) -> bool:
        """Whether a kernel is being started, replaced or torn down right now."""
        return self._life_lock.locked()

    @property
    def death(self) -> KernelDeath | None:
        """Why the kernel died, while the session is ``dead``."""
        return self._death

    @property
    def info(self) -> SessionInfo:
        return SessionInfo(id=self.id, container_id=self.container_id or "", image=self.image,
                           runtime=self.config.runtime, created_at=self.created_at,
                           from_pool=self.from_pool, phases=dict(self.phases))

    @property
    def _init(self) -> InitClient:
        return self._box.init

    @property
    def _kernel(self) -> KernelConnection | None:
        return self._slot.kernel

    def __repr__(self) -> str:
        return f"<AsyncSession {self.id} {self._state.value}>"

    def _check_open(self) -> None:
        if self._state is SessionState.CLOSED:
            raise SessionClosedError(self.id)
        if self._state in (SessionState.NEW, SessionState.STARTING):
            raise SandboxError(f"session {self.id} is not started; call start() first")

    # -- start -----------------------------------------------------------------------
    async def __aenter__(self) -> AsyncSession:
        if self._state is SessionState.NEW:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> AsyncSession:
        """Start the container and wait for its kernel. Cleans up fully on failure."""
        async with self._life_lock:
            if self._state is not SessionState.NEW:
                raise SandboxError(f"session {self.id} was already started")
            self._state = SessionState.STARTING
            t0 = time.monotonic()
            try:
                await self._launch(deadline=t0 + self.config.start_timeout_s)
            except BaseException as exc:
                await self._teardown()
                self._state = SessionState.CLOSED
                # What says why (the engine, the image, a start error) goes up as it is;
                # anything else (a deadline, the kernel dying while it starts, a bug)
                # is a SessionStartError, so that callers have one type to catch.
                if not isinstance(exc, Exception) or isinstance(
                        exc, EngineUnavailableError | ImageError | SessionStartError):
                    raise
                raise SessionStartError(f"session {self.id} did not start: {exc}",
                                        session_id=self.id) from exc
            self.phases["total"] = time.monotonic() - t0
            self.started_monotonic = self.last_used = time.monotonic()
            self._state = SessionState.READY
        return self

    async def _launch(self, deadline: float, *, replace: bool = False) -> None:
        """A container (in place of the old one if *replace*: files lost) and its kernel."""
        await self._slot.launch(deadline, self.phases, replace=replace)
        self._death = None

    def _died(self, death: KernelDeath) -> None:
        """The death watch's report: the kernel (or its container) is gone."""
        if self._state is SessionState.CLOSED:
            return
        self._state = SessionState.DEAD
        log.info("session %s: %s", self.id, death.reason)
        self._end_active_cell(death)

    def _end_active_cell(self, death: KernelDeath) -> None:
        """The running cell (if any) ends with status ``died`` and this reason."""
        self._death = death
        if self._active_msg is not None and self._kernel is not None:
            self._kernel.post(self._active_msg, "died", {"death": death})

    # -- kernel replacement -------------------------------------------------------------
    async def _restart_in_place(self) -> bool:
        """Kill everything in the container, start a fresh kernel there. False when that
        failed (the container is to be replaced)."""
        try:
            await self._slot.restart_in_place(time.monotonic() + self.config.start_timeout_s)
        except SandboxError as exc:
            log.warning("session %s: restart in place failed (%s); replacing the container",
                        self.id, exc)
            return False
        self._death = None
        return True

    async def _replace_container(self) -> None:
        """A new container (files lost). Raises SessionLostError if that failed too."""
        try:
            await self._launch(time.monotonic() + self.config.start_timeout_s, replace=True)
        except SandboxError as exc:
            self._state = SessionState.DEAD
            self._box.suspect = True
            raise SessionLostError(f"session {self.id}: the container could not be replaced: "
                                   f"{exc}", session_id=self.id) from exc

    async def _restart_kernel(self) -> bool:
        """In place, else a new container; True if it was replaced. Under the life lock."""
        if await self._restart_in_place():
            return False
        await self._replace_container()
        return True

    async def _recover(self, notes: list[str]) -> None:
        """Before running a cell on a dead session: a fresh kernel (or container)."""
        death = self._death
        if death is not None and (death.container_gone or self._box.suspect):
            await self._replace_container()
            notes.append(f"the previous container was lost ({death.reason}); a new container "
                         "was started: variables and files from before are gone")
        else:
            replaced = await self._restart_kernel()
            what = "container" if replaced else "kernel"
            reason = death.reason if death else "unknown"
            notes.append(f"the previous kernel died ({reason}); a fresh {what} was started: "
                         "variables from earlier cells are gone"
                         + (", and files too" if replaced else ""))
        self._state = SessionState.READY

    async def restart(self) -> None:
        """Start a fresh kernel in the same container (files kept, variables lost).

        A running execution ends with status ``died``. Falls back to replacing the
        container when the kernel cannot be restarted in place.
        """
        self._check_open()
        async with self._life_lock:
            self._check_open()
            if self._active_msg is not None:
                self._end_active_cell(KernelDeath(reason="restarted by the caller"))
            await self._restart_kernel()
            if self._state is not SessionState.CLOSED:
                self._state = SessionState.BUSY if self._exec_lock.locked() else SessionState.READY

    async def interrupt(self) -> None:
        """Send SIGINT to the kernel (KeyboardInterrupt in the running cell)."""
        self._check_open()
        if self._life_lock.locked():
            # A kernel is being started, replaced or torn down: no cell runs in it, and
            # a SIGINT now would kill the new kernel before it installs its handler (the
            # restart then waited out start_timeout_s and replaced the container).
            return
        async with self._life_lock:  # free: taken at once; a restart now waits for it
            await self._box.interrupt()

    # -- execution ------------------------------------------------------------------------
    async def execute(
        self,
        code: str,
        *,
        timeout: float | None = None,
        wait: bool = True,
        on_output: Callable[[Event], Any] | None = None,
    ) -> ExecutionResult:
        """Run *code*; return its result. *on_output* sees each output as it arrives."""
        stream = self.stream(code, timeout=timeout, wait=wait)
        async with contextlib.aclosing(stream) as events:
            async for event in events:
                if isinstance(event, ExecutionResult):
                    return event
                if on_output is not None:
                    outcome = on_output(event)
                    if asyncio.iscoroutine(outcome):
                        await outcome
        raise SandboxError("execution ended without a result")  # pragma: no cover

    async def stream(
        self, code: str, *, timeout: float | None = None, wait: bool = True
    ) -> AsyncGenerator[Event | ExecutionResult, None]:
        """Run *code*, yielding each output the moment the kernel publishes it, then the
        :class:`ExecutionResult`. Closing the iterator early interrupts the cell."""
        limit = check_cell(code, timeout, self.config.execution_timeout_s)
        self._check_open()
        if not wait and self._exec_lock.locked():
            raise SessionBusyError(self.id)
        async with self._exec_lock:
            self._check_open()
            run = self._run(code, limit)
            try:
                async for item in run:
                    yield item
            finally:
                await run.aclose()  # now, not at garbage collection: a left cell is ended

    async def _run(self, code: str, limit: float) -> AsyncGenerator[Event | ExecutionResult, None]:
        await self._abandoned.wait()  # a cell whose caller left may still be ending
        t_start = time.monotonic()
        notes: list[str] = []
        restarted = False
        # Under the life lock: a restart or close in progress ends first, so that the
        # cell runs on the new kernel (or gets SessionClosedError) instead of finding
        # no kernel at all half-way through a restart.
        async with self._life_lock:
            self._check_open()
            if self._state is SessionState.DEAD:
                await self._recover(notes)
                restarted = True
        kernel = self._kernel
        if kernel is None:
            raise SessionLostError(f"session {self.id} has no kernel", session_id=self.id)
        self._state = SessionState.BUSY
        self.executions += 1
        msg_id, queue = kernel.execute(code)
        self._active_msg = msg_id
        box = CellBox(self, kernel, lambda: self._state is SessionState.CLOSED)
        run = CellRun.configured(queue, box, limit, self.config, notes)
        try:
            async with contextlib.aclosing(run.events()) as events:
                async for event in events:
                    yield event
        finally:
            if run.abandoned and self._state is not SessionState.CLOSED:
                # The caller went away mid-cell: interrupt it and let the next cell wait
                # until it has really ended (else the kernel would abort the next one).
                self._abandoned.end(run, kernel, msg_id, self.config.interrupt_grace_s)
            else:
                kernel.release(msg_id)
            self._active_msg = None
            self.last_used = time.monotonic()
            if self._state is SessionState.BUSY:
                self._state = SessionState.READY
        yield await run.result(started=t_start, restarted=restarted)

    # -- files ---------------------------------------------------------------------------
    def _container_for_files(self) -> str:
        self._check_open()
        container = self._box.container_id
        if container is None or self._box.suspect:
            raise SessionLostError(f"session {self.id} has no running container; run a cell "
                                   "or restart to get a new one", session_id=self.id)
        return container

    # -- close ---------------------------------------------------------------------------
    async def close(self) -> None:
        """Remove the container and every host-side file of the session. Idempotent."""
        if self._state is SessionState.CLOSED:
            return
        async with self._life_lock:
            if self.state is SessionState.CLOSED:  # closed while we waited for the lock
                return
            self._state = SessionState.CLOSED
            if self._active_msg is not None:
                self._end_active_cell(KernelDeath(reason="the session was closed"))
            await self._teardown()

    async def _teardown(self) -> None:
        # Runs to the end even if the caller is cancelled half-way (a server shutting
        # down, a reaper pass cut short); the cancellation goes up once it has ended.
        await run_to_end(self._dismantle())

    async def _dismantle(self) -> None:
        container = self._box.container_id
        try:
            await self._slot.drop()
            try:
                await self._box.remove()
            except SandboxError as exc:
                log.warning("session %s: container %s not removed (%s); the reaper will "
                            "retry", self.id, (container or "")[:12], exc)
        finally:
            remove_run_dir(self.run_dir)
            if self._uid_lease is not None:
                self._uid_lease.release()
