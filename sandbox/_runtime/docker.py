"""The Docker backend: hardened containers through the docker SDK.

This module and :mod:`sandbox._runtime.engine` are the only places that touch
``docker`` errors; everything leaves here as a :class:`SandboxError`. The SDK
is blocking, so every call runs in a worker thread and sessions never block
one another or the event loop.
"""

from __future__ import annotations

import asyncio
import builtins
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

    async def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    @property
    def client(self) -> docker.DockerClient:
        with self._lock:
            if self._client is None:
                self._client = connect()
            return self._client

    async def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        def run() -> Any:
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

        return await asyncio.to_thread(run)

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
        def run() -> ExecOutput:
            api = self.client.api
            try:
                exec_id = api.exec_create(
                    container_id, argv, stdin=stdin is not None, stdout=True, stderr=True,
                    tty=False, user=user, workdir=workdir, environment={},
                )["Id"]
            except docker.errors.APIError as exc:
                if _gone(exc) or exc.status_code == 409:
                    raise FileOperationError("the sandbox container is not running") from exc
                raise
            sock = api.exec_start(exec_id, socket=True)
            raw: socket.socket = getattr(sock, "_sock", sock)  # type: ignore[arg-type]
            try:
                raw.settimeout(timeout_s)
                deadline = time.monotonic() + timeout_s
                if stdin is not None:
                    _send_all(raw, stdin, deadline)
                    with contextlib.suppress(OSError):
                        raw.shutdown(socket.SHUT_WR)
                out, err, truncated = _read_multiplexed(raw, max_stdout, deadline)
            except TimeoutError as exc:
                raise FileOperationError(f"command in sandbox did not finish within "
                                         f"{timeout_s:.0f}s") from exc
            finally:
                with contextlib.suppress(OSError):
                    raw.close()
                with contextlib.suppress(OSError):
                    sock.close()
            code = None
            for _ in range(50):  # the exit code lands a moment after the stream closes
                info = api.exec_inspect(exec_id)
                if not info.get("Running"):
                    code = info.get("ExitCode")
                    break
                time.sleep(0.01)
            return ExecOutput(exit_code=-1 if code is None else int(code), stdout=out,
                              stderr=err, stdout_truncated=truncated)

        result: ExecOutput = await self._call("exec in container", run)
        return result


def _send_all(sock: socket.socket, data: bytes, deadline: float) -> None:
    view = memoryview(data)
    while view:
        if time.monotonic() > deadline:
            raise TimeoutError
        sent = sock.send(view[: 1 << 20])
        view = view[sent:]


def _read_multiplexed(sock: socket.socket, max_stdout: int, deadline: float
                      ) -> tuple[bytes, bytes, bool]:
    """Demultiplex Docker's attach stream (8-byte frame headers), bounding stdout."""
    out, err = bytearray(), bytearray()
    truncated = False
    buf = bytearray()
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        buf += chunk
        while len(buf) >= 8:
            kind, size = struct.unpack(">BxxxL", bytes(buf[:8]))
            if len(buf) < 8 + size:
                break
            payload = bytes(buf[8 : 8 + size])
            del buf[: 8 + size]
            if kind == 1:
                if len(out) + len(payload) > max_stdout:
                    truncated = True
                    out += payload[: max(0, max_stdout - len(out))]
                    return bytes(out), bytes(err), truncated
                out += payload
            elif kind == 2 and len(err) < 64 * 1024:
                err += payload
    return bytes(out), bytes(err), truncated
