"""A session: one hardened container, one IPython kernel in it, driven over ZMQ.

Lifecycle (``session.state``)::

    new ──start──▶ starting ──▶ ready ◀──▶ busy
                      │           │  ▲        │ kernel exits / container dies
                      ▼           ▼  └─recover┘──────▶ dead
                    closed ◀───close (from any state; idempotent)

Executions run one at a time: a second ``execute`` on the same session waits
for its turn (first come, first served); pass ``wait=False`` to get
:class:`SessionBusyError` at once instead.

A cell over its time limit is ended in escalating steps, and the result says
which one did it (:class:`TimeoutInfo`): SIGINT to the kernel; after
``interrupt_grace_s``, kill every process in the container and start a fresh
kernel (variables lost, files kept); if the container's init does not answer,
replace the container (files lost too).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import logging
import os
import secrets
import signal
import socket
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from pathlib import Path
from typing import Any

from sandbox._config import SandboxConfig, default_base_dir
from sandbox._exceptions import (
    ConfigError,
    DeadlineExceeded,
    EngineUnavailableError,
    ImageError,
    SandboxError,
    SessionBusyError,
    SessionClosedError,
    SessionLostError,
    SessionStartError,
)
from sandbox._files import FileOps
from sandbox._kernel import (
    MAX_FRAMES,
    InitClient,
    InitUnavailable,
    KernelConnection,
    KernelEndpoint,
    Route,
    clear_run_dir,
    write_endpoint,
    write_init_key,
)
from sandbox._models import ExecutionResult, FileInfo, KernelDeath, SessionInfo, TimeoutInfo
from sandbox._outputs import Event, OutputAssembler
from sandbox._rundir import make_run_dir, remove_run_dir
from sandbox._runtime.base import (
    LABEL_APP,
    LABEL_HOST,
    LABEL_OWNER_PID,
    LABEL_RUN_DIR,
    LABEL_SESSION,
    ContainerSpec,
    Runtime,
)
from sandbox._uids import for_session

log = logging.getLogger("sandbox.session")

IOPUB_GRACE_S = 1.0  # after the execute_reply, how long the IOPub 'idle' may lag
DEATH_CONFIRM_S = 1.5  # how long to watch for the engine to report a container's exit


class SessionState(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    DEAD = "dead"
    CLOSED = "closed"


def death_from_exit(info: dict[str, Any], memory_mb: int) -> KernelDeath:
    """Turn agentbox-init's exit report (untrusted JSON) into a KernelDeath."""
    code = info.get("exit_code")
    sig = info.get("signal")
    code = code if isinstance(code, int) else None
    sig = sig if isinstance(sig, int) else None
    oom = info.get("oom_killed") is True
    if oom:
        reason = f"out of memory: the kernel was killed for exceeding the {memory_mb} MiB limit"
    elif sig is not None:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        reason = f"the kernel was killed by {name}"
    elif code is not None:
        reason = f"the kernel exited with code {code}"
    else:
        reason = "the kernel stopped"
    return KernelDeath(reason=reason, exit_code=code, signal=sig, oom_killed=oom)


def drop_note(event: dict[str, Any], max_message_bytes: int) -> str:
    """The note for a kernel message the host did not keep (``KernelConnection`` posts
    these; the reason is the host's own words, not the box's)."""
    reason = event.get("reason")
    return (f"a kernel message was dropped unread: {reason}; max_message_bytes is "
            f"{max_message_bytes // 2**20} MiB" if isinstance(reason, str) and reason
            else "a kernel message was dropped unread")


class AsyncSession:
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
            from sandbox._runtime.docker import default_runtime

            runtime = default_runtime()
        self.runtime = runtime
        self.id = session_id or f"s-{secrets.token_hex(6)}"
        self.image = self.config.image or image_tag()
        self.run_dir = Path(run_root or default_base_dir()) / self.id
        self.labels = {**(labels or {}), LABEL_APP: "agentbox", LABEL_SESSION: self.id,
                       LABEL_RUN_DIR: str(self.run_dir), LABEL_OWNER_PID: str(os.getpid()),
                       LABEL_HOST: socket.gethostname()}
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
        self._container_id: str | None = None
        self._kernel: KernelConnection | None = None
        self._init = InitClient(self.run_dir)
        self._generation = 0  # ours: names the connection file and sockets
        self._init_generation = 0  # agentbox-init's count of kernels started
        self._watch_task: asyncio.Task[None] | None = None
        self._death: KernelDeath | None = None
        self._container_suspect = False
        self._active_msg: str | None = None
        self._files = FileOps(self.runtime, self.config, self._container_for_files)
        self._background: set[asyncio.Task[Any]] = set()
        self._draining: asyncio.Task[Any] | None = None

    # -- properties ----------------------------------------------------------------
    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def container_id(self) -> str | None:
        return self._container_id

    @property
    def busy(self) -> bool:
        """Whether an execution is running (or queued) on this session."""
        return self._exec_lock.locked()

    @property
    def generation(self) -> int:
        """Kernels started so far (a restart or a replaced container adds one): an
        operation that saw it change was cut short by a restart."""
        return self._generation

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
        return SessionInfo(id=self.id, container_id=self._container_id or "", image=self.image,
                           runtime=self.config.runtime, created_at=self.created_at,
                           from_pool=self.from_pool, phases=dict(self.phases))

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
                await self._launch_container(deadline=t0 + self.config.start_timeout_s)
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

    async def _launch_container(self, deadline: float) -> None:
        t0 = time.monotonic()
        if not self.run_dir.exists():
            make_run_dir(self.run_dir, self.config.uid, self.config.gid)
        self._generation += 1
        self._init.key = write_init_key(self.run_dir, self.config.uid, self.config.gid)
        endpoint = write_endpoint(self.run_dir, self._generation, self.config.uid,
                                  self.config.gid)
        spec = ContainerSpec(
            name=f"agentbox-{self.id}-{self._generation}", image=self.image, config=self.config,
            run_dir=self.run_dir,
            env={**self.config.env, "AGENTBOX_AUTOSTART": endpoint.connection_file},
            labels=self.labels,
        )
        self._container_id = await self._start_container(spec)
        self._init.container_id = self._container_id
        self._container_suspect = False
        t1 = time.monotonic()
        self.phases["container_start"] = t1 - t0
        self._init_generation = 1
        await self._connect(endpoint, deadline)
        self.phases["kernel_ready"] = time.monotonic() - t1

    async def _start_container(self, spec: ContainerSpec) -> str:
        """``runtime.start``, but a cancel (a client gone, a server shutting down) waits
        for the engine's answer first, so that the caller's teardown knows the container
        the engine created meanwhile and removes it."""
        starting = asyncio.ensure_future(self.runtime.start(spec))
        try:
            return await asyncio.shield(starting)
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                # Bounded by the engine client's own timeout; a second cancel stops the
                # wait and leaves the container to the reaper (its run dir will be gone).
                self._container_id = await starting
            raise

    async def _connect(self, endpoint: Any, deadline: float) -> None:
        kernel = KernelConnection(endpoint, max_message_bytes=self.config.max_message_bytes,
                                  container_id=self._container_id)
        try:
            await kernel.connect(self.run_dir, deadline, alive=self._container_running)
        except BaseException:
            await kernel.close()
            raise
        self._kernel = kernel
        self._death = None
        self._watch_task = asyncio.create_task(self._watch(self._init_generation))

    async def _container_running(self) -> bool:
        if self._container_id is None:
            return False
        try:
            return (await self.runtime.state(self._container_id)).running
        except SandboxError:
            return True  # the engine hiccuped: let the deadline decide

    # -- death watch -------------------------------------------------------------------
    async def _watch(self, init_generation: int) -> None:
        """Waits on agentbox-init for this kernel's exit; runs for the kernel's lifetime."""
        info = await self._init.wait_exit(init_generation)
        if self._state is SessionState.CLOSED:
            return
        if info is not None:
            death = death_from_exit(info, self.config.memory_mb)
        else:
            death = await self._diagnose_lost_init()
        self._death = death
        self._state = SessionState.DEAD
        log.info("session %s: %s", self.id, death.reason)
        if self._active_msg is not None and self._kernel is not None:
            self._kernel.post(self._active_msg, "died", {})

    async def _diagnose_lost_init(self) -> KernelDeath:
        """init's connection broke: find out whether the container is gone."""
        end = time.monotonic() + DEATH_CONFIRM_S
        while True:
            try:
                state = await self.runtime.state(self._container_id or "")
            except SandboxError as exc:
                self._container_suspect = True
                return KernelDeath(reason=f"lost contact with the container ({exc})",
                                   container_gone=True)
            if not state.running:
                self._container_suspect = True
                if not state.exists:
                    return KernelDeath(reason="the container was removed", container_gone=True)
                reason = ("out of memory: the container was killed" if state.oom_killed
                          else f"the container stopped (exit code {state.exit_code})")
                return KernelDeath(reason=reason, exit_code=state.exit_code,
                                   oom_killed=state.oom_killed, container_gone=True)
            if time.monotonic() >= end:
                self._container_suspect = True
                return KernelDeath(reason="lost contact with the container's init process",
                                   container_gone=False)
            await asyncio.sleep(0.05)

    # -- kernel replacement -------------------------------------------------------------
    async def _drop_kernel(self) -> None:
        task, self._watch_task = self._watch_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        kernel, self._kernel = self._kernel, None
        if kernel is not None:
            await kernel.close()

    def _remove_generation_files(self, endpoint: KernelEndpoint | None) -> None:
        if endpoint is None:
            return
        for path in (self.run_dir / endpoint.connection_file,
                     *endpoint.socket_paths(self.run_dir)):
            with contextlib.suppress(OSError):
                path.unlink()

    async def _restart_kernel(self) -> bool:
        """Kill everything in the container, start a fresh kernel. True if the container
        had to be replaced (files lost). Raises SessionLostError if that failed too."""
        old = self._kernel.endpoint if self._kernel is not None else None
        await self._drop_kernel()
        try:
            if self._container_suspect:
                raise InitUnavailable("the container is not trustworthy any more")
            killed = await self._init.request({"op": "kill"}, timeout=5.0)
            if not killed.get("ok"):
                raise InitUnavailable(f"kill refused: {killed.get('error')}")
            self._remove_generation_files(old)
            self._generation += 1
            endpoint = write_endpoint(self.run_dir, self._generation, self.config.uid,
                                      self.config.gid)
            started = await self._init.request(
                {"op": "start", "connection_file": endpoint.connection_file}, timeout=5.0)
            gen = started.get("generation")
            if not started.get("ok") or not isinstance(gen, int):
                raise InitUnavailable(f"start refused: {started.get('error')}")
            self._init_generation = gen
            await self._connect(endpoint, time.monotonic() + self.config.start_timeout_s)
            return False
        except (InitUnavailable, DeadlineExceeded, SandboxError) as exc:
            log.warning("session %s: restart in place failed (%s); replacing the container",
                        self.id, exc)
            await self._replace_container()
            return True

    async def _replace_container(self) -> None:
        await self._drop_kernel()
        old = self._container_id
        try:
            if old is not None:
                await self.runtime.remove(old)
            self._container_id = None
            clear_run_dir(self.run_dir)
            await self._launch_container(time.monotonic() + self.config.start_timeout_s)
        except SandboxError as exc:
            self._state = SessionState.DEAD
            self._container_suspect = True
            raise SessionLostError(f"session {self.id}: the container could not be replaced: "
                                   f"{exc}", session_id=self.id) from exc

    async def _recover(self, notes: list[str]) -> None:
        """Before running a cell on a dead session: a fresh kernel (or container)."""
        death = self._death
        if death is not None and (death.container_gone or self._container_suspect):
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
            active = self._active_msg
            kernel = self._kernel
            if active is not None and kernel is not None:
                self._death = KernelDeath(reason="restarted by the caller")
                kernel.post(active, "died", {})
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
            await self._send_interrupt()

    def _detach(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, context=contextvars.Context())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _abandon(self, kernel: KernelConnection, msg_id: str,
                       queue: Route) -> None:
        """Interrupt a cell nobody waits for any more; wait for it to end (or restart)."""
        try:
            await self._send_interrupt()
            deadline = time.monotonic() + self.config.interrupt_grace_s + IOPUB_GRACE_S
            replied = idle = False
            while not (replied and idle):
                try:
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        channel, msg = await queue.get()
                except TimeoutError:
                    if not replied and self._state is not SessionState.CLOSED:
                        async with self._life_lock:
                            await self._restart_kernel()
                    return
                header = msg.get("header") if isinstance(msg, dict) else None
                kind = header.get("msg_type") if isinstance(header, dict) else None
                if channel == "died":
                    return
                if channel == "shell" and kind == "execute_reply":
                    replied = True
                elif channel == "iopub" and kind == "status":
                    content = msg.get("content")
                    idle = isinstance(content, dict) and content.get("execution_state") == "idle"
        except SandboxError as exc:
            log.warning("session %s: ending an abandoned cell failed: %s", self.id, exc)
        finally:
            kernel.release(msg_id)

    async def _send_interrupt(self) -> None:
        try:
            reply = await self._init.request({"op": "signal", "signum": int(signal.SIGINT)},
                                             timeout=2.0)
            if reply.get("ok"):
                return
        except InitUnavailable:
            pass
        if self._container_id is not None:
            with contextlib.suppress(SandboxError):
                await self.runtime.signal(self._container_id, int(signal.SIGINT))

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
        if not isinstance(code, str):
            raise ConfigError("code must be a string")
        if "\0" in code:
            raise ConfigError("code contains a NUL byte, which Python source cannot hold")
        limit = self.config.execution_timeout_s if timeout is None else timeout
        if not isinstance(limit, int | float) or limit <= 0:
            raise ConfigError(f"timeout must be a positive number of seconds, not {timeout!r}")
        self._check_open()
        if not wait and self._exec_lock.locked():
            raise SessionBusyError(self.id)
        async with self._exec_lock:
            self._check_open()
            run = self._run(code, float(limit))
            try:
                async for item in run:
                    yield item
            finally:
                await run.aclose()  # now, not at garbage collection: a left cell is ended

    async def _run(self, code: str, limit: float) -> AsyncGenerator[Event | ExecutionResult, None]:
        if self._draining is not None:  # a cell whose caller left is still ending
            draining, self._draining = self._draining, None
            with contextlib.suppress(Exception):
                await asyncio.shield(draining)
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
        assembler = OutputAssembler(self.config.max_output_bytes,
                                    max_outputs=self.config.max_outputs,
                                    max_live_events=self.config.max_live_events,
                                    max_live_bytes=self.config.max_live_bytes)
        reply: dict[str, Any] | None = None
        died = False
        timeout_info: TimeoutInfo | None = None
        interrupting = False
        deadline = time.monotonic() + limit
        idle_deadline: float | None = None
        finished = False
        iopub_lost = False
        iopub_cut = False  # the host dropped a kernel message of this cell (over a cap)
        try:
            while not (reply is not None and assembler.idle):
                until = deadline if idle_deadline is None else min(deadline, idle_deadline)
                try:
                    async with asyncio.timeout(max(0.0, until - time.monotonic())):
                        channel, msg = await queue.get()
                except TimeoutError:
                    if reply is not None:
                        notes.append(
                            "the kernel's final 'idle' status did not arrive: output was lost "
                            "(the host ended the IOPub connection after a message over its "
                            f"caps: max_message_bytes {self.config.max_message_bytes // 2**20} "
                            f"MiB, at most {MAX_FRAMES} frames); the rest of this cell's "
                            "output is missing")
                        iopub_lost = True
                        break
                    if not interrupting:
                        interrupting = True
                        await self._send_interrupt()
                        deadline = time.monotonic() + self.config.interrupt_grace_s
                        continue
                    async with self._life_lock:
                        replaced = await self._restart_kernel()
                    timeout_info = TimeoutInfo(limit_s=limit,
                                               ended_by="replace" if replaced else "restart",
                                               state_lost=True, files_lost=replaced)
                    break
                if reply is not None and channel in ("iopub", "dropped", "parsing"):
                    # IOPub is still delivering (or dropping) this cell's messages: the
                    # grace for its 'idle' counts from the latest one, not the reply.
                    idle_deadline = time.monotonic() + IOPUB_GRACE_S
                if channel == "iopub":
                    for event in assembler.feed(msg):
                        yield event
                elif channel == "shell":
                    header = msg.get("header")
                    if isinstance(header, dict) and header.get("msg_type") == "execute_reply":
                        reply = msg
                        idle_deadline = time.monotonic() + IOPUB_GRACE_S
                elif channel == "died":
                    died = True
                    break
                elif channel == "dropped":
                    iopub_cut = True
                    note = drop_note(msg, self.config.max_message_bytes)
                    if note not in notes:
                        notes.append(note)
            if interrupting and timeout_info is None and not died:
                timeout_info = TimeoutInfo(limit_s=limit, ended_by="interrupt", state_lost=False)
            finished = True
        finally:
            abandoned = (not finished and reply is None and not died
                         and self._state is not SessionState.CLOSED)
            if abandoned:
                # The caller went away mid-cell: interrupt it and let the next cell wait
                # until it has really ended (else the kernel would abort the next one).
                # In a task of its own, in a fresh context: a cancellation that keeps
                # being re-delivered (anyio cancel scopes, as in Starlette) cannot stop it.
                self._draining = self._detach(self._abandon(kernel, msg_id, queue))
            else:
                kernel.release(msg_id)
            self._active_msg = None
            self.last_used = time.monotonic()
            if self._state is SessionState.BUSY:
                self._state = SessionState.READY
        if iopub_lost and self._kernel is kernel:
            try:
                await kernel.reconnect_iopub()
            except SandboxError:
                async with self._life_lock:
                    await self._restart_kernel()
                notes.append("IOPub could not be reconnected; the kernel was restarted")
        yield self._result(reply, assembler, died, timeout_info, restarted, notes,
                           time.monotonic() - t_start, lost=iopub_lost or iopub_cut)

    def _result(self, reply: dict[str, Any] | None, assembler: OutputAssembler, died: bool,
                timeout_info: TimeoutInfo | None, restarted: bool, notes: list[str],
                duration: float, lost: bool = False) -> ExecutionResult:
        outputs = assembler.finish()
        notes = notes + assembler.notes
        content = reply.get("content") if reply else None
        content = content if isinstance(content, dict) else {}
        count = content.get("execution_count")
        count = count if isinstance(count, int) else assembler.execution_count
        death = None
        if died:
            status = "died"
            death = self._death or KernelDeath(reason="the kernel stopped")
        elif timeout_info is not None:
            status = "timeout"
            notes.append(self._timeout_note(timeout_info))
        elif content.get("status") == "ok":
            status = "ok"
        else:
            status = "error"
            if content.get("status") == "aborted":
                notes.append("the kernel aborted this execution")
        return ExecutionResult(status=status, execution_count=count, outputs=outputs,  # type: ignore[arg-type]
                               duration_s=duration, truncated=assembler.truncated or lost,
                               timeout=timeout_info, death=death, kernel_restarted=restarted,
                               notes=notes)

    @staticmethod
    def _timeout_note(info: TimeoutInfo) -> str:
        base = f"execution exceeded its {info.limit_s:g}s limit"
        if info.ended_by == "interrupt":
            return base + "; it was interrupted (KeyboardInterrupt); kernel state is kept"
        if info.ended_by == "restart":
            return base + "; it ignored the interrupt, so the kernel was restarted: " \
                          "variables are gone, files are kept"
        return base + "; the container did not answer, so it was replaced: variables and " \
                      "files are gone"

    # -- files ---------------------------------------------------------------------------
    def _container_for_files(self) -> str:
        self._check_open()
        if self._container_id is None or self._container_suspect:
            raise SessionLostError(f"session {self.id} has no running container; run a cell "
                                   "or restart to get a new one", session_id=self.id)
        return self._container_id

    # Each is bounded per session and cut at config.file_timeout_s on the host's clock
    # (FileOperationError "busy", "timeout"), whatever the box does to the helper.
    async def upload(self, path: str, data: bytes | str | AsyncIterable[bytes]) -> None:
        """Write *data* to *path* in the working directory (parents created). Chunks
        (an async iterable) are read only once the session's turn for files has come."""
        payload = (data.encode() if isinstance(data, str)
                   else data if isinstance(data, AsyncIterable) else bytes(data))
        await self._files.write(path, payload, self.config.max_upload_bytes)
        self.last_used = time.monotonic()

    async def download(self, path: str) -> bytes:
        """The bytes of the regular file *path* (symlinks are refused)."""
        data = await self._files.read(path, self.config.max_download_bytes)
        self.last_used = time.monotonic()
        return data

    async def list_files(self, path: str = "") -> list[FileInfo]:
        """Files and directories under *path* (recursive), symlinks not followed."""
        return await self._files.list(path)

    async def delete_file(self, path: str) -> None:
        """Remove a file, symlink or directory tree under the working directory."""
        await self._files.delete(path)

    # -- close ---------------------------------------------------------------------------
    async def close(self) -> None:
        """Remove the container and every host-side file of the session. Idempotent."""
        if self._state is SessionState.CLOSED:
            return
        async with self._life_lock:
            if self.state is SessionState.CLOSED:  # closed while we waited for the lock
                return
            self._state = SessionState.CLOSED
            if self._active_msg is not None and self._kernel is not None:
                self._death = KernelDeath(reason="the session was closed")
                self._kernel.post(self._active_msg, "died", {})
            await self._teardown()

    async def _teardown(self) -> None:
        # Runs to the end even if the caller is cancelled half-way (a server shutting
        # down, a reaper pass cut short): the removal is shielded, the dir always goes.
        container, self._container_id = self._container_id, None
        try:
            await self._drop_kernel()
            if container is not None:
                try:
                    await asyncio.shield(self.runtime.remove(container))
                except SandboxError as exc:
                    log.warning("session %s: container %s not removed (%s); the reaper will "
                                "retry", self.id, container[:12], exc)
        finally:
            remove_run_dir(self.run_dir)
            if self._uid_lease is not None:
                self._uid_lease.release()
