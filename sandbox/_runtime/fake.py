"""An in-memory :class:`Runtime` for unit tests (the role httpx's MockTransport plays).

Containers are records: started from a spec or planted with :meth:`FakeRuntime.plant`
(what another process left behind), listed by labels, signalled, made to exit or OOM,
removed. Commands run in them answer what the test scripted (:meth:`FakeRuntime.script`).
An outage (:attr:`FakeRuntime.down`) makes every call fail as a real engine that does not
answer does (and :meth:`FakeRuntime.probe` say so); :meth:`FakeRuntime.fail_next` makes
one call fail with a given error. Every call is recorded in :attr:`FakeRuntime.calls`.

Nothing here starts a kernel: a session on this runtime never becomes ready. It is for
the bookkeeping above the runtime (the orphan sweep, the manager's registry and
lifetimes, the file operations' use of ``exec``).
"""

from __future__ import annotations

import builtins
import itertools
import signal as signals
from collections.abc import Callable
from dataclasses import dataclass, field

from sandbox._exceptions import EngineUnavailableError, FileOperationError, SessionStartError
from sandbox._runtime.base import (
    CONTAINER_HOME,
    ContainerSpec,
    ContainerState,
    ContainerSummary,
    EngineProbe,
    ExecOutput,
    Runtime,
)

# A scripted command: its answer, or a function of (container id, argv, stdin) giving it.
ExecAnswer = ExecOutput | BaseException | Callable[[str, list[str], bytes | None], ExecOutput]
_STOPPING = {signals.SIGKILL, signals.SIGTERM, signals.SIGINT}


@dataclass
class FakeContainer:
    id: str
    name: str
    labels: dict[str, str]
    image: str = ""
    spec: ContainerSpec | None = None
    running: bool = True
    exit_code: int | None = None
    oom_killed: bool = False
    signals: list[int] = field(default_factory=list)
    execs: list[list[str]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "running" if self.running else "exited"


class FakeRuntime(Runtime):
    """Containers as records; see the module docstring."""

    name = "fake"

    def __init__(self) -> None:
        self.containers: dict[str, FakeContainer] = {}
        self.removed: list[str] = []
        self.calls: list[tuple[str, str]] = []  # (method, container id or "")
        self.down = False
        self.image_present = True
        self.closed = False
        self._failures: dict[str, BaseException] = {}
        self._scripts: list[tuple[tuple[str, ...], ExecAnswer]] = []
        self._ids = itertools.count(1)

    # -- what a test arranges ----------------------------------------------------------
    def plant(self, labels: dict[str, str], *, name: str | None = None,
              running: bool = True) -> str:
        """A container that exists without this runtime having started it."""
        cid = self._new_id()
        self.containers[cid] = FakeContainer(cid, name or f"planted-{cid[:6]}", dict(labels),
                                             running=running,
                                             exit_code=None if running else 0)
        return cid

    def exit(self, container_id: str, code: int = 0, *, oom: bool = False) -> None:
        """The container's PID 1 ends with *code* (killed by the OOM killer: *oom*)."""
        c = self.containers[container_id]
        c.running, c.exit_code, c.oom_killed = False, code, oom

    def fail_next(self, method: str, exc: BaseException) -> None:
        """The next call of *method* (``start``, ``state``, ``remove``...) raises *exc*."""
        self._failures[method] = exc

    def script(self, argv_prefix: list[str], answer: ExecAnswer) -> None:
        """Commands whose argv starts with *argv_prefix* answer *answer* (latest first)."""
        self._scripts.insert(0, (tuple(argv_prefix), answer))

    # -- the Runtime -------------------------------------------------------------------
    async def start(self, spec: ContainerSpec) -> str:
        self._enter("start", spec.name)
        if any(c.name == spec.name for c in self.containers.values()):
            raise SessionStartError(f"container {spec.name} did not start: the name is "
                                    "already in use")
        cid = self._new_id()
        self.containers[cid] = FakeContainer(cid, spec.name, dict(spec.labels),
                                             image=spec.image, spec=spec)
        return cid

    async def state(self, container_id: str) -> ContainerState:
        self._enter("state", container_id)
        c = self.containers.get(container_id)
        if c is None:
            return ContainerState(exists=False)
        return ContainerState(exists=True, running=c.running,
                              exit_code=None if c.running else c.exit_code,
                              oom_killed=c.oom_killed)

    async def signal(self, container_id: str, signum: int) -> None:
        self._enter("signal", container_id)
        c = self.containers.get(container_id)
        if c is None or not c.running:
            return  # gone, or not running: as Docker's 404/409
        c.signals.append(signum)
        if signum in _STOPPING:
            self.exit(container_id, 128 + signum)

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
        self._enter("exec", container_id)
        c = self.containers.get(container_id)
        if c is None or not c.running:
            raise FileOperationError("the sandbox container is not running")
        c.execs.append(list(argv))
        answer = self._answer(argv)
        if isinstance(answer, BaseException):
            raise answer
        out = answer(container_id, list(argv), stdin) if callable(answer) else answer
        if len(out.stdout) > max_stdout:
            return ExecOutput(out.exit_code, out.stdout[:max_stdout], out.stderr, True)
        return out

    async def remove(self, container_id: str) -> None:
        self._enter("remove", container_id)
        if self.containers.pop(container_id, None) is not None:
            self.removed.append(container_id)

    async def list(self, labels: dict[str, str]) -> builtins.list[ContainerSummary]:
        self._enter("list", "")
        return [ContainerSummary(c.id, c.name, dict(c.labels), c.status)
                for c in self.containers.values()
                if all(c.labels.get(k) == v for k, v in labels.items())]

    async def probe(self, image: str | None = None, *, timeout_s: float = 5.0) -> EngineProbe:
        self.calls.append(("probe", ""))
        if self.down:
            return EngineProbe(engine=False, engine_error="the Docker engine does not answer "
                               "(fake outage)")
        return EngineProbe(engine=True, image=image or "agentbox-kernel:fake",
                           image_present=self.image_present)

    async def close(self) -> None:
        self.closed = True

    # -- inside ------------------------------------------------------------------------
    def _new_id(self) -> str:
        return f"{next(self._ids):064x}"

    def _enter(self, method: str, container_id: str) -> None:
        self.calls.append((method, container_id))
        if self.down:
            raise EngineUnavailableError(f"{method}: the Docker engine does not answer "
                                         "(fake outage)")
        failure = self._failures.pop(method, None)
        if failure is not None:
            raise failure

    def _answer(self, argv: builtins.list[str]) -> ExecAnswer:
        for prefix, answer in self._scripts:
            if tuple(argv[: len(prefix)]) == prefix:
                return answer
        return ExecOutput(exit_code=0, stdout=b"", stderr=b"")

