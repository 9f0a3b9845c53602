"""The container backend interface. Docker is one implementation; a Kubernetes one
(a pod per session, RuntimeClass for gVisor) would be another, without touching
sessions, the manager or the API.

A backend only runs containers: start one from a :class:`ContainerSpec`, say how
it is, signal it, run a command inside it with stdin/stdout (used for file
transfer), list the ones carrying given labels, and remove them; and say whether
it is up at all (:meth:`Runtime.probe`). Everything about kernels lives above it.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox._config import SandboxConfig

CONTAINER_RUN_DIR = "/run/kernel"
CONTAINER_HOME = "/home/sandbox"

LABEL_APP = "org.agentbox.app"
LABEL_MANAGER = "org.agentbox.manager"
LABEL_SESSION = "org.agentbox.session"
LABEL_RUN_DIR = "org.agentbox.run-dir"
LABEL_OWNER_PID = "org.agentbox.owner-pid"
LABEL_HOST = "org.agentbox.host"


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to start one sandbox container."""

    name: str
    image: str
    config: SandboxConfig
    run_dir: Path
    env: dict[str, str]
    labels: dict[str, str]


@dataclass(frozen=True)
class ContainerState:
    """A container as the engine reports it."""

    exists: bool
    running: bool = False
    exit_code: int | None = None
    oom_killed: bool = False
    error: str = ""


@dataclass(frozen=True)
class ExecOutput:
    """What a command run inside a container printed, and how it ended."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool = False


@dataclass(frozen=True)
class EngineProbe:
    """Whether the engine answers, and whether the kernel image is there (``/healthz``,
    ``agentbox doctor``)."""

    engine: bool
    engine_error: str = ""
    image: str = ""
    image_present: bool = False

    @property
    def ok(self) -> bool:
        return self.engine and self.image_present

    def as_health(self) -> dict[str, Any]:
        """The engine part of ``/healthz``'s body."""
        if not self.engine:
            return {"engine": False, "engine_error": self.engine_error, "image_present": False}
        return {"engine": True, "image": self.image, "image_present": self.image_present}


@dataclass(frozen=True)
class ContainerSummary:
    id: str
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    status: str = ""


class Runtime(abc.ABC):
    """A place to run sandbox containers. All methods are async and thread-safe."""

    name: str = "abstract"

    @abc.abstractmethod
    async def start(self, spec: ContainerSpec) -> str:
        """Create and start a container; return its id. Raises SessionStartError."""

    @abc.abstractmethod
    async def state(self, container_id: str) -> ContainerState:
        """How the container is now (``exists=False`` once it is gone)."""

    @abc.abstractmethod
    async def signal(self, container_id: str, signum: int) -> None:
        """Send a signal to the container's PID 1."""

    @abc.abstractmethod
    async def exec(
        self,
        container_id: str,
        argv: list[str],
        *,
        user: str,
        stdin: bytes | None = None,
        workdir: str = CONTAINER_HOME,
        max_stdout: int = 64 * 1024 * 1024,
        timeout_s: float = 60.0,
    ) -> ExecOutput:
        """Run *argv* inside the container as *user*, feeding *stdin*; bounded output."""

    @abc.abstractmethod
    async def remove(self, container_id: str) -> None:
        """Kill and remove the container. Idempotent: a missing container is fine."""

    @abc.abstractmethod
    async def list(self, labels: dict[str, str]) -> list[ContainerSummary]:
        """Containers (running or not) carrying every one of *labels*."""

    @abc.abstractmethod
    async def probe(self, image: str | None = None, *, timeout_s: float = 5.0) -> EngineProbe:
        """Whether the engine answers and *image* (default: the tag the current sources
        build to) is present. Never raises for an engine that is down: says so."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the default has none."""
