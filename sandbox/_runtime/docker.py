"""The Docker backend: hardened containers through the docker SDK.

This module and :mod:`sandbox._runtime.engine` are the only places that touch
``docker`` errors; everything leaves here as a :class:`SandboxError`. The SDK
is blocking, so every call runs in a worker thread and sessions never block
one another or the event loop. Commands run in a box (``exec``) are the box's
to stall: their calls have a pool of their own and host deadlines, and their
output is read on the event loop, so no worker ever waits on a box (see exec).
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextlib
import socket
import struct
import threading
import time
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.types import LogConfig, Mount, Ulimit

from sandbox._exceptions import (
    EngineUnavailableError,
    FileOperationError,
    ImageError,
    SandboxError,
    SessionStartError,
)
from sandbox._runtime.base import (
    CONTAINER_HOME,
    CONTAINER_RUN_DIR,
    ContainerSpec,
    ContainerState,
    ContainerSummary,
    ExecOutput,
    Runtime,
)
from sandbox._runtime.engine import ENGINE_HINT, connect
from sandbox._runtime.seccomp import security_opt as seccomp_security_opt


def _gone(exc: BaseException) -> bool:
    return isinstance(exc, docker.errors.NotFound)


def _engine_error(what: str, exc: BaseException) -> SandboxError:
    if isinstance(exc, requests.exceptions.RequestException | ConnectionError):
        return EngineUnavailableError(f"{what}: the Docker engine does not answer ({exc}); "
                                      f"{ENGINE_HINT}")
    if isinstance(exc, docker.errors.APIError):
        return SandboxError(f"{what}: {exc.explanation or exc}")
    return SandboxError(f"{what}: {exc}")


def container_kwargs(spec: ContainerSpec) -> dict[str, Any]:
    """The docker SDK arguments for a hardened sandbox container (pure; tested)."""
    cfg = spec.config
    tmpfs = {
        "/tmp": f"rw,nosuid,nodev,noexec,size={cfg.tmp_size_mb}m,mode=1777",
        CONTAINER_HOME: (f"rw,nosuid,nodev,size={cfg.workdir_size_mb}m,"
                         f"uid={cfg.uid},gid={cfg.gid},mode=0700"),
    }
    kwargs: dict[str, Any] = {
        "image": spec.image,
        "name": spec.name,
        "detach": True,
        "user": cfg.user,
        # The image has a passwd entry for uid 1000 only; a per-session uid has none, and
        # getpass.getuser() reads these first.
        "environment": {"USER": "sandbox", "LOGNAME": "sandbox", **spec.env},
        "working_dir": CONTAINER_HOME,
        "labels": dict(spec.labels),
        "hostname": "sandbox",
        "network_mode": cfg.network,
        "read_only": cfg.read_only_root,
        "mem_limit": f"{cfg.memory_mb}m",
        "memswap_limit": f"{cfg.memory_mb}m",  # swap equal to memory: no swap at all
        "pids_limit": cfg.pids,
        "nano_cpus": int(cfg.cpus * 1e9),
        "ulimits": [Ulimit(name="nofile", soft=cfg.open_files, hard=cfg.open_files)],
        "tmpfs": tmpfs,
        "mounts": [Mount(target=CONTAINER_RUN_DIR, source=str(spec.run_dir), type="bind",
                         read_only=False)],
        "log_config": LogConfig(type="json-file",
                                config={"max-size": str(cfg.log_max_bytes), "max-file": "1"}),
        "ipc_mode": "private",
        "init": False,  # the image's own init (agentbox-init) is PID 1
        "auto_remove": False,  # keep the state for OOM/exit inspection until we remove it
    }
    if cfg.network != "host" and not cfg.network.startswith("container:"):
        # Docker sets this to 0 in every container of its own network namespace:
        # without it uid 1000 could bind port 80. (gVisor ignores it; see docs/security.md.)
        kwargs["sysctls"] = {"net.ipv4.ip_unprivileged_port_start": "1024"}
    if cfg.drop_all_capabilities:
        kwargs["cap_drop"] = ["ALL"]
    # Docker's default seccomp profile less io_uring and AF_VSOCK (sandbox/_runtime/seccomp.py).
    kwargs["security_opt"] = [seccomp_security_opt(cfg.runtime)]
    if cfg.no_new_privileges:
        kwargs["security_opt"].append("no-new-privileges:true")
    if cfg.runtime != "runc":
        kwargs["runtime"] = cfg.runtime
    return kwargs


_default: DockerRuntime | None = None
_default_lock = threading.Lock()


def default_runtime() -> DockerRuntime:
    """The process-wide Docker runtime: one client (and connection pool) for all sessions."""
    global _default
    with _default_lock:
        if _default is None:
            _default = DockerRuntime()
        return _default


class DockerRuntime(Runtime):
    """Runs sandbox containers on a Docker engine (``DOCKER_HOST`` or the local socket)."""

    name = "docker"

    def __init__(self, client: docker.DockerClient | None = None) -> None:
        self._client = client
        self._lock = threading.Lock()
        # Commands the host gave up on (container id -> exec ids), see exec().
        self._abandoned: dict[str, set[str]] = {}
        self._wedged: dict[str, concurrent.futures.Future[Any]] = {}
        self._engine_down: dict[str, tuple[float, str]] = {}  # container -> (when, why)
        self._control_locks: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Lock]] = {}
        self._control_workers: concurrent.futures.ThreadPoolExecutor | None = None
        self._io_workers: concurrent.futures.ThreadPoolExecutor | None = None

    async def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            pools = (self._io_workers, self._control_workers)
            self._io_workers = self._control_workers = None
        for pool in pools:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        if client is not None:
            client.close()

    @property
    def client(self) -> docker.DockerClient:
        with self._lock:
            if self._client is None:
                self._client = connect()
            return self._client

    async def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(_guarded, what, fn, *args, **kwargs)

    async def start(self, spec: ContainerSpec) -> str:
        kwargs = container_kwargs(spec)

        def run() -> str:
            try:
                container = self.client.containers.run(**kwargs)
            except docker.errors.ImageNotFound as exc:
                raise ImageError(f"kernel image {spec.image} not found; run "
                                 "`agentbox image build`") from exc
            except docker.errors.APIError as exc:
                # The container may exist even though start failed: remove it.
                with contextlib.suppress(docker.errors.DockerException):
                    self.client.containers.get(spec.name).remove(force=True)
                raise SessionStartError(
                    f"container {spec.name} did not start: {exc.explanation or exc}"
                ) from exc
            return str(container.id)

        container_id: str = await self._call("start container", run)
        return container_id

    async def state(self, container_id: str) -> ContainerState:
        def run() -> ContainerState:
            try:
                attrs = self.client.api.inspect_container(container_id)
            except docker.errors.NotFound:
                return ContainerState(exists=False)
            st = attrs.get("State", {})
            return ContainerState(
                exists=True,
                running=bool(st.get("Running")),
                exit_code=None if st.get("Running") else st.get("ExitCode"),
                oom_killed=bool(st.get("OOMKilled")),
                error=str(st.get("Error") or ""),
            )

        result: ContainerState = await self._call("inspect container", run)
        return result

    async def signal(self, container_id: str, signum: int) -> None:
        def run() -> None:
            try:
                self.client.api.kill(container_id, signal=signum)
            except docker.errors.APIError as exc:
                if _gone(exc) or exc.status_code == 409:  # gone, or not running
                    return
                raise

        await self._call("signal container", run)

    async def remove(self, container_id: str) -> None:
        def run() -> None:
            try:
                self.client.api.remove_container(container_id, force=True, v=True)
            except docker.errors.APIError as exc:
                # 404: already gone; 409: removal already in progress.
                if _gone(exc) or exc.status_code == 409:
                    return
                raise

        await self._call("remove container", run)
        # Its commands went with it.
        self._abandoned.pop(container_id, None)
        self._wedged.pop(container_id, None)
        self._engine_down.pop(container_id, None)
        self._control_locks.pop(container_id, None)

    async def list(self, labels: dict[str, str]) -> builtins.list[ContainerSummary]:
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}

        def run() -> builtins.list[ContainerSummary]:
            found = self.client.api.containers(all=True, filters=filters)
            return [
                ContainerSummary(
                    id=c["Id"], name=(c.get("Names") or ["?"])[0].lstrip("/"),
                    labels=c.get("Labels") or {}, status=c.get("State", ""),
                )
                for c in found
            ]

        result: builtins.list[ContainerSummary] = await self._call("list containers", run)
        return result

    async def exec(
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
        """Run *argv* in the container; the deadline is the host's, whatever the box does.

        The command runs as the box's own user, so the box can stop it (SIGSTOP), hold
        its pipes open or trickle its output. A command stopped while it starts (before
        its execve, under runc and runsc alike) even keeps dockerd 20.10 inside its exec
        start, holding the container's lock on its commands: every later exec, inspect or
        kill of that container hangs until the command ends (a restart kills it; a
        forced removal still works). So: the stream is read on the event loop (no worker
        thread waits on the box); the engine calls run in a pool of their own, one at a
        time per container, never on the default executor; every wait is cut at a
        deadline measured here; the socket is closed whatever happens; and what comes
        back is bounded in bytes and frames. A command given up on is remembered per
        container: past MAX_ABANDONED_EXECS of them still running, or while an engine
        call on the container hangs, further commands are refused ("stuck").
        """
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
            await self._pump(sock, stdin, stream, deadline)
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
            _close_exec_socket(sock)
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
            if _gone(exc) or exc.status_code == 409:
                raise FileOperationError("the sandbox container is not running") from exc
            raise
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
                job = self._control_pool().submit(_guarded, what, fn, *args, **kwargs)
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
                _close_exec_socket(result)

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

    async def _pump(self, sock: Any, stdin: bytes | None, stream: ExecStream,
                    deadline: float) -> None:
        raw = getattr(sock, "_sock", sock)
        if _loop_capable(raw):
            await _pump_on_loop(raw, stdin, stream, deadline)
            return
        # TLS (SSLSocket) or SSH (a paramiko channel): asyncio cannot wait on those, so a
        # worker of a small pool of their own does, never past the deadline; leaving early
        # (cancelled) shuts the socket so that the worker is released at once.
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._io_pool(), _pump_blocking, raw, stdin, stream,
                                    deadline)
        try:
            await work
        except BaseException:
            with contextlib.suppress(OSError, AttributeError, EOFError):
                raw.shutdown(socket.SHUT_RDWR)
            raise

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


def _guarded(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """*fn* with docker's and the transport's errors turned into SandboxErrors."""
    try:
        return fn(*args, **kwargs)
    except SandboxError:
        raise
    except docker.errors.ImageNotFound as exc:
        raise ImageError(f"{what}: image not found ({exc.explanation}); "
                         "run `agentbox image build`") from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException,
            ConnectionError) as exc:
        raise _engine_error(what, exc) from exc


# How the host bounds a command run in a box (docker exec), whatever the box does.
EXEC_CONTROL_THREADS = 32  # engine calls about commands; one at a time per container
EXEC_IO_THREADS = 8  # stream workers for TLS/SSH engine sockets only; plain sockets use none
EXIT_CODE_WAIT_S = 0.5  # for the exit code after the stream ended
WEDGE_GRACE_S = 1.0  # for a hung engine call on a container to end, before "stuck"
MAX_ABANDONED_EXECS = 4  # commands given up on and still running, per container
MAX_EXEC_STDERR = 64 * 1024
MAX_EXEC_FRAME = 1 << 20  # dockerd frames what it reads from the pipe: 32 KiB at most
_RECV = 1 << 16
_FRAME_HEADER = struct.Struct(">BxxxL")


class ExecStream:
    """Docker's multiplexed attach stream (an 8-byte header per frame), parsed as it
    arrives with every dimension bounded: stdout (then ``truncated``), stderr (the rest is
    dropped), the size of one frame and the number of frames (a box that writes one byte
    at a time makes a frame per byte; parsing each costs the host)."""

    def __init__(self, max_stdout: int, max_stderr: int = MAX_EXEC_STDERR) -> None:
        self.max_stdout, self.max_stderr = max_stdout, max_stderr
        self.max_frames = 1024 + (max_stdout + max_stderr) // 1024
        self.frames = 0
        self._out, self._err, self._buf = bytearray(), bytearray(), bytearray()
        self.truncated = False

    @property
    def done(self) -> bool:
        return self.truncated

    @property
    def stdout(self) -> bytes:
        return bytes(self._out)

    @property
    def stderr(self) -> bytes:
        return bytes(self._err)

    def feed(self, chunk: bytes) -> None:
        self._buf += chunk
        pos, end = 0, len(self._buf)
        with memoryview(self._buf) as view:
            while end - pos >= 8 and not self.done:
                kind, size = _FRAME_HEADER.unpack_from(view, pos)
                if size > MAX_EXEC_FRAME:
                    raise FileOperationError(f"the sandbox's output stream is malformed (a "
                                             f"frame of {size} bytes)", "bad_output")
                if end - pos - 8 < size:
                    break
                self._frame(kind, view[pos + 8 : pos + 8 + size])
                pos += 8 + size
        del self._buf[:pos]

    def _frame(self, kind: int, payload: memoryview) -> None:
        self.frames += 1
        if self.frames > self.max_frames:
            raise FileOperationError(f"the sandbox's output came in more than "
                                     f"{self.max_frames} pieces; refused", "bad_output")
        if kind == 1:
            room = self.max_stdout - len(self._out)
            if len(payload) > room:
                self._out += payload[: max(0, room)]
                self.truncated = True
                return
            self._out += payload
        else:  # 2: stderr; 3: the engine's own error text
            self._err += payload[: max(0, self.max_stderr - len(self._err))]


def _loop_capable(raw: Any) -> bool:
    """A plain Unix or TCP socket, which the event loop can wait on (not TLS, not SSH)."""
    return type(raw) is socket.socket


def _close_exec_socket(sock: Any) -> None:
    raw = getattr(sock, "_sock", sock)
    for obj in (raw, sock):
        with contextlib.suppress(OSError, AttributeError, EOFError):
            obj.close()


async def _pump_on_loop(raw: socket.socket, stdin: bytes | None, stream: ExecStream,
                        deadline: float) -> None:
    loop = asyncio.get_running_loop()
    raw.setblocking(False)
    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
        if stdin is not None:
            try:
                await loop.sock_sendall(raw, stdin)
                raw.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the command stopped reading (too large, say): its answer says why
        while not stream.done:
            chunk = await loop.sock_recv(raw, _RECV)
            if not chunk:
                return
            stream.feed(chunk)


def _pump_blocking(raw: Any, stdin: bytes | None, stream: ExecStream, deadline: float) -> None:
    """The same, blocking (TLS/SSH sockets): each call waits no longer than the deadline."""

    def until_deadline() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left

    if stdin is not None:
        view = memoryview(stdin)
        try:
            while view:
                raw.settimeout(until_deadline())
                view = view[raw.send(view[:_RECV]) :]
            raw.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
    while not stream.done:
        raw.settimeout(until_deadline())
        chunk = raw.recv(_RECV)
        if not chunk:
            return
        stream.feed(chunk)
