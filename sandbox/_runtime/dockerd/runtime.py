"""The Docker backend: hardened containers through the docker SDK.

The SDK is blocking, so every call runs in a worker thread and sessions never block
one another or the event loop; every error leaves translated (:mod:`.errors`).
Commands run in a box (``exec``) are the box's to stall: they have pools of their own
and host deadlines, and their output is read on the event loop (:mod:`.execs`).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import threading
from typing import Any

import docker
import docker.errors

from sandbox._runtime.base import (
    CONTAINER_HOME,
    ContainerSpec,
    ContainerState,
    ContainerSummary,
    EngineProbe,
    ExecOutput,
    Runtime,
)
from sandbox._runtime.dockerd.client import connect
from sandbox._runtime.dockerd.container import container_kwargs
from sandbox._runtime.dockerd.diagnose import probe_engine
from sandbox._runtime.dockerd.errors import DOCKER_ERRORS, guarded, is_gone_or_busy, start_failed
from sandbox._runtime.dockerd.execs import Commands

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
        self._commands = Commands(lambda: self.client)

    async def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        self._commands.close()
        if client is not None:
            client.close()

    @property
    def client(self) -> docker.DockerClient:
        with self._lock:
            if self._client is None:
                self._client = connect()
            return self._client

    async def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(guarded, what, fn, *args, **kwargs)

    async def start(self, spec: ContainerSpec) -> str:
        kwargs = container_kwargs(spec)

        def run() -> str:
            try:
                container = self.client.containers.run(**kwargs)
            except docker.errors.APIError as exc:
                if not isinstance(exc, docker.errors.ImageNotFound):
                    # The container may exist even though start failed: remove it.
                    with contextlib.suppress(*DOCKER_ERRORS):
                        self.client.containers.get(spec.name).remove(force=True)
                raise start_failed(spec.name, spec.image, exc) from exc
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
                if not is_gone_or_busy(exc):  # gone, or not running: nothing to signal
                    raise

        await self._call("signal container", run)

    async def remove(self, container_id: str) -> None:
        def run() -> None:
            try:
                self.client.api.remove_container(container_id, force=True, v=True)
            except docker.errors.APIError as exc:
                if not is_gone_or_busy(exc):  # already gone, or its removal is under way
                    raise

        await self._call("remove container", run)
        self._commands.forget(container_id)

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
        """Run *argv* in the container; the deadline is the host's, whatever the box does
        (see :mod:`sandbox._runtime.dockerd.execs`)."""
        return await self._commands.run(container_id, argv, user=user, stdin=stdin,
                                        workdir=workdir, max_stdout=max_stdout,
                                        timeout_s=timeout_s)

    async def probe(self, image: str | None = None, *, timeout_s: float = 5.0) -> EngineProbe:
        """Asked on a fresh connection of its own (the shared client's pool may hold
        connections to an engine that has since gone)."""
        return await asyncio.to_thread(probe_engine, image, timeout_s)
