"""Commands run in a box (``docker exec``), bounded by the host whatever the box does.

The command runs as the box's own user, so the box can stop it (SIGSTOP), hold its
pipes open or trickle its output. A command stopped while it starts (before its
execve, under runc and runsc alike) even keeps dockerd 20.10 inside its exec start,
holding the container's lock on its commands: every later exec, inspect or kill of
that container hangs until the command ends (a restart kills it; a forced removal
still works). So: the stream is read on the event loop (no worker thread waits on the
box); the engine calls run in a pool of their own, one at a time per container, never
on the default executor; every wait is cut at a deadline measured here; the socket is
closed whatever happens; and what comes back is bounded in bytes and frames. A command
given up on is remembered per container: past MAX_ABANDONED_EXECS of them still
running, or while an engine call on the container hangs, further commands are refused
("stuck").
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import docker
import docker.errors

from sandbox._exceptions import EngineUnavailableError, FileOperationError, SandboxError
from sandbox._runtime.base import CONTAINER_HOME, ExecOutput
from sandbox._runtime.dockerd import attach
from sandbox._runtime.dockerd.attach import ExecStream, close_exec_socket
from sandbox._runtime.dockerd.errors import exec_refused, guarded

EXEC_CONTROL_THREADS = 32  # engine calls about commands; one at a time per container
EXEC_IO_THREADS = 8  # stream workers for TLS/SSH engine sockets only; plain sockets use none
EXIT_CODE_WAIT_S = 0.5  # for the exit code after the stream ended
WEDGE_GRACE_S = 1.0  # for a hung engine call on a container to end, before "stuck"
MAX_ABANDONED_EXECS = 4  # commands given up on and still running, per container


class Commands:
    """The commands of every container of one :class:`DockerRuntime`: what was given up
    on, which container's engine calls hang, and the pools the calls run in."""

    def __init__(self, client: Callable[[], docker.DockerClient]) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._abandoned: dict[str, set[str]] = {}  # container id -> exec ids
        self._wedged: dict[str, concurrent.futures.Future[Any]] = {}
        self._engine_down: dict[str, tuple[float, str]] = {}  # container -> (when, why)
        self._control_locks: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Lock]] = {}
        self._control_workers: concurrent.futures.ThreadPoolExecutor | None = None
        self._io_workers: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def client(self) -> docker.DockerClient:
        return self._client()

    def close(self) -> None:
        with self._lock:
            pools = (self._io_workers, self._control_workers)
            self._io_workers = self._control_workers = None
        for pool in pools:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    def forget(self, container_id: str) -> None:
        """The container is removed: its commands went with it."""
        self._abandoned.pop(container_id, None)
        self._wedged.pop(container_id, None)
        self._engine_down.pop(container_id, None)
        self._control_locks.pop(container_id, None)

    async def run(
        self,
        container_id: str,
        argv: builtins.list[str],
        *,
        user: str,
        stdin: bytes | None = None,
        workdir: str = CONTAINER_HOME,
        max_stdout: int = 64 * 1024 * 1024,
        timeout_s: float = 60.0,
    ) -> ExecOutput:
        """Run *argv* in the container; the deadline is the host's, whatever the box
        does (see the module's docstring)."""
        deadline = time.monotonic() + timeout_s
        await self._refuse_if_stuck(container_id, deadline)
        # Two calls: an exec created too late (the engine hung) is never started.
        exec_id = await self._exec_call(container_id, deadline, "exec in container",
                                        self._exec_create, container_id, argv, user,
                                        stdin is not None, workdir)
        sock = await self._exec_call(container_id, deadline, "exec in container",
                                     self.client.api.exec_start, exec_id, socket=True)
        stream = ExecStream(max_stdout)
        try:
            await attach.pump(sock, stdin, stream, deadline, self._io_pool())
        except TimeoutError as exc:
            self._abandon(container_id, exec_id)
            raise FileOperationError(f"command in sandbox did not finish within "
                                     f"{timeout_s:g}s (host deadline); it was abandoned",
                                     "timeout") from exc
        except BaseException:
            # Cancelled (the caller left) or failed: the command may still be running.
            self._abandon(container_id, exec_id)
            raise
        finally:
            close_exec_socket(sock)
        code = await self._exit_code(container_id, exec_id, deadline)
        return ExecOutput(exit_code=-1 if code is None else code, stdout=stream.stdout,
                          stderr=stream.stderr, stdout_truncated=stream.truncated)

    def _exec_create(self, container_id: str, argv: builtins.list[str], user: str,
                     with_stdin: bool, workdir: str) -> str:
        """Create the exec (blocking; in the exec-control pool)."""
        try:
            exec_id: str = self.client.api.exec_create(
                container_id, argv, stdin=with_stdin, stdout=True, stderr=True,
                tty=False, user=user, workdir=workdir, environment={},
            )["Id"]
        except docker.errors.APIError as exc:
            raise exec_refused(exc) from exc
        return exec_id

    def _abandon(self, container_id: str, exec_id: str) -> None:
        self._abandoned.setdefault(container_id, set()).add(exec_id)

    async def _exec_call(self, container_id: str, deadline: float, what: str, fn: Any,
                         *args: Any, **kwargs: Any) -> Any:
        """An engine call about a command in *container_id*, in the exec-control pool, one
        at a time per container, given up at *deadline*. A call that does not return by
        then marks the container wedged (its worker is freed by the engine client's own
        timeout); nothing more is asked about it until that call has returned."""
        self._check_wedged(container_id)
        job: concurrent.futures.Future[Any] | None = None
        asked = time.monotonic()
        cut = asyncio.timeout(max(0.0, deadline - asked))
        try:
            async with cut, self._control_lock(container_id):
                self._check_wedged(container_id)
                failed = self._engine_down.get(container_id)
                if failed is not None and failed[0] >= asked:
                    # The engine did not answer the call this one waited behind: neither
                    # would it answer this one now, so say so at once, not a timeout later.
                    raise EngineUnavailableError(failed[1])
                job = self._control_pool().submit(guarded, what, fn, *args, **kwargs)
                try:
                    return await asyncio.wrap_future(job)
                except EngineUnavailableError as exc:
                    self._engine_down[container_id] = (time.monotonic(), str(exc))
                    raise
        except TimeoutError:
            if not cut.expired():  # the call's own (a socket's) timeout, not the deadline
                raise FileOperationError(f"{what}: the engine timed out", "failed") from None
            if job is None or job.cancel():  # waited for the container's turn, or the pool
                raise FileOperationError(f"{what}: no answer from the engine within the "
                                         "deadline", "timeout") from None
            self._wedged[container_id] = job
            job.add_done_callback(self._late_result(container_id))
            raise FileOperationError(
                f"{what}: the engine did not answer within the deadline: a command that "
                "the sandbox stopped while it started holds the container's command queue; "
                "no more file operations until it answers (restart the session to end "
                "it)", "stuck") from None
        except BaseException:  # cancelled: whatever the call still brings is cleared up
            if job is not None and not job.cancel():
                job.add_done_callback(self._late_result(container_id))
            raise

    def _late_result(self, container_id: str) -> Any:
        def done(job: concurrent.futures.Future[Any]) -> None:
            if job.cancelled() or job.exception() is not None:
                return
            result = job.result()
            if not isinstance(result, str | dict):  # exec_start's socket, nobody reads it
                close_exec_socket(result)

        return done

    async def _settle_wedge(self, container_id: str, deadline: float) -> None:
        """A hung engine call ends as soon as the stopped command does (a restart kills
        it): give it a moment to, rather than refuse a command that would just work."""
        job = self._wedged.get(container_id)
        if job is None or job.done():
            return
        grace = max(0.0, min(WEDGE_GRACE_S, deadline - time.monotonic()))
        with contextlib.suppress(TimeoutError, Exception):  # its own error is not ours
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(job)), grace)

    def _check_wedged(self, container_id: str) -> None:
        job = self._wedged.get(container_id)
        if job is None:
            return
        if job.done():
            self._wedged.pop(container_id, None)
            return
        raise FileOperationError("an earlier engine call on this sandbox's commands has "
                                 "not returned (a command the sandbox stopped while it "
                                 "started holds it): no more file operations until it does; "
                                 "restart the session to end it", "stuck")

    def _control_lock(self, container_id: str) -> asyncio.Lock:
        # A container is driven by one session, so by one loop; a lock is made per loop.
        loop = asyncio.get_running_loop()
        held = self._control_locks.get(container_id)
        if held is None or held[0] is not loop:
            held = self._control_locks[container_id] = (loop, asyncio.Lock())
        return held[1]

    def _control_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._control_workers is None:
                self._control_workers = concurrent.futures.ThreadPoolExecutor(
                    max_workers=EXEC_CONTROL_THREADS, thread_name_prefix="agentbox-exec")
            return self._control_workers

    def _io_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._io_workers is None:
                self._io_workers = concurrent.futures.ThreadPoolExecutor(
                    max_workers=EXEC_IO_THREADS, thread_name_prefix="agentbox-exec-io")
            return self._io_workers

    async def _exit_code(self, container_id: str, exec_id: str, deadline: float) -> int | None:
        """The exit code, which lands a moment after the stream closes (None: still
        running, e.g. the box holds the command's pipes or stopped it after output)."""
        end = min(deadline, time.monotonic() + EXIT_CODE_WAIT_S)
        while True:
            info = await self._exec_call(container_id, deadline, "inspect exec",
                                         self.client.api.exec_inspect, exec_id)
            if not info.get("Running"):
                code = info.get("ExitCode")
                return code if isinstance(code, int) else None
            if time.monotonic() >= end:
                self._abandon(container_id, exec_id)
                return None
            await asyncio.sleep(0.01)

    async def _refuse_if_stuck(self, container_id: str, deadline: float) -> None:
        """Every command the host gave up on may still run in the box (stopped, holding a
        pid of the box, a few of the engine's resources and, under gVisor, a host
        process): past the limit, refuse more."""
        await self._settle_wedge(container_id, deadline)
        self._check_wedged(container_id)
        abandoned = self._abandoned.get(container_id)
        if not abandoned or len(abandoned) < MAX_ABANDONED_EXECS:
            return
        for exec_id in list(abandoned):
            try:
                info = await self._exec_call(container_id, deadline, "inspect exec",
                                             self.client.api.exec_inspect, exec_id)
            except FileOperationError:
                raise
            except SandboxError:
                info = {}  # not known (gone with its container) or the engine hiccuped
            if not info.get("Running"):
                abandoned.discard(exec_id)
        if len(abandoned) >= MAX_ABANDONED_EXECS:
            raise FileOperationError(
                f"{len(abandoned)} earlier commands in this sandbox never finished (stopped "
                "or blocked inside the box); no more are started until they end: restart "
                "the session to end them", "stuck")

