"""A box: one hardened container and its in-box init (``agentbox-init``, PID 1).

What an :class:`~sandbox.AsyncSession` and the Jupyter provisioner
(``sandbox/integrations/provisioner.py``) both need, written once: launch (spec, labels, a fresh
init key), a kernel restart in place (init kills every process in the container and
starts a fresh kernel; files kept), interrupt and signals (through init, the engine
when init does not answer), death diagnosis (init's exit report, else the engine's
view of the container) and removal.

A box knows nothing of kernel connections or cells: its caller says which connection
file the next kernel starts from (``prepare``), and talks to the kernel itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sandbox._config import SandboxConfig
from sandbox._endpoint import INIT_SOCKET, write_init_key
from sandbox._exceptions import SandboxError
from sandbox._init_client import InitClient, InitUnavailable
from sandbox._models import KernelDeath
from sandbox._runtime.base import (
    LABEL_APP,
    LABEL_HOST,
    LABEL_OWNER_PID,
    LABEL_RUN_DIR,
    LABEL_SESSION,
    ContainerSpec,
    ContainerState,
    Runtime,
)

log = logging.getLogger("sandbox.box")

T = TypeVar("T")
DEATH_CONFIRM_S = 1.5  # how long to watch for the engine to report a container's exit
SIGNAL_TIMEOUT_S = 2.0
KILL_TIMEOUT_S = 5.0  # init's kill waits up to 3 s for stubborn processes
START_TIMEOUT_S = 5.0
# The signals init forwards to the kernel's process group (others go to the engine).
INIT_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGKILL, signal.SIGQUIT})


class EngineCall(Protocol):
    """How a box makes a call to the container engine (the provisioner's runs in a
    thread of its own at interpreter exit)."""

    def __call__(self, make: Callable[[], Awaitable[T]]) -> Awaitable[T]: ...


def _direct(make: Callable[[], Awaitable[T]]) -> Awaitable[T]:
    return make()


def box_labels(session_id: str, run_dir: Path, extra: dict[str, str] | None = None
               ) -> dict[str, str]:
    """The labels every box carries: ``agentbox gc`` finds what a dead owner left by them."""
    return {**(extra or {}), LABEL_APP: "agentbox", LABEL_SESSION: session_id,
            LABEL_RUN_DIR: str(run_dir), LABEL_OWNER_PID: str(os.getpid()),
            LABEL_HOST: socket.gethostname()}


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


def death_from_state(state: ContainerState, memory_mb: int) -> KernelDeath:
    """The engine's view of a container that stopped (or is gone), as a KernelDeath."""
    if not state.exists:
        reason = "the container was removed"
    elif state.oom_killed:
        reason = f"out of memory: the container was killed (limit {memory_mb} MiB)"
    else:
        reason = f"the container stopped (exit code {state.exit_code})"
    return KernelDeath(reason=reason, exit_code=state.exit_code, oom_killed=state.oom_killed,
                       container_gone=True)


class Box:
    """One container and its init. ``container_id`` is None until :meth:`launch` and
    after :meth:`remove`; ``suspect`` says its init is not to be trusted any more."""

    def __init__(self, runtime: Runtime, config: SandboxConfig, run_dir: Path, *, name: str,
                 image: str, labels: dict[str, str], engine: EngineCall = _direct) -> None:
        self.runtime = runtime
        self.config = config
        self.run_dir = run_dir
        self.name = name
        self.image = image
        self.labels = labels
        self.init = InitClient(run_dir)
        self.container_id: str | None = None
        self.containers = 0  # containers started for this run dir (names them)
        self.init_generation = 0  # agentbox-init's count of kernels started
        self.suspect = False
        self._engine = engine

    # -- launch, restart, replace, remove ----------------------------------------------
    async def launch(self, connection_file: str) -> str:
        """Start a container whose init starts a kernel from *connection_file* (a name in
        the run dir). A cancel waits for the engine's answer first, so that the caller's
        teardown knows the container the engine created meanwhile and removes it."""
        with contextlib.suppress(OSError):
            (self.run_dir / INIT_SOCKET).unlink()
        self.init.key = write_init_key(self.run_dir, self.config.uid, self.config.gid)
        self.containers += 1
        spec = ContainerSpec(
            name=f"agentbox-{self.name}-{self.containers}", image=self.image,
            config=self.config, run_dir=self.run_dir,
            env={**self.config.env, "AGENTBOX_AUTOSTART": connection_file}, labels=self.labels)
        starting = asyncio.ensure_future(self.runtime.start(spec))
        try:
            self.container_id = await asyncio.shield(starting)
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                # Bounded by the engine client's own timeout; a second cancel stops the
                # wait and leaves the container to the reaper.
                self.container_id = await starting
            raise
        self.init.container_id = self.container_id
        self.suspect = False
        self.init_generation = 1
        return self.container_id

    async def restart_kernel(self, prepare: Callable[[], str]) -> int:
        """Kill every process in the container and start a fresh kernel from the
        connection file ``prepare()`` names (called between the two). Init's generation
        of the new kernel; InitUnavailable when init does not cooperate."""
        if self.container_id is None or self.suspect:
            raise InitUnavailable("the container is not trustworthy any more")
        killed = await self.init.request({"op": "kill"}, timeout=KILL_TIMEOUT_S)
        if not killed.get("ok"):
            raise InitUnavailable(f"kill refused: {killed.get('error')}")
        connection_file = prepare()
        started = await self.init.request({"op": "start", "connection_file": connection_file},
                                          timeout=START_TIMEOUT_S)
        generation = started.get("generation")
        if not started.get("ok") or not isinstance(generation, int):
            raise InitUnavailable(f"start refused: {started.get('error')}")
        self.init_generation = generation
        return generation

    async def replace(self, prepare: Callable[[], str]) -> str:
        """Remove the container and launch a new one in the same run dir (files lost);
        ``prepare()`` readies the run dir and names the connection file. Raises
        SandboxError when the old container could not be removed."""
        await self.remove()
        return await self.launch(prepare())

    async def remove(self) -> None:
        """Kill and remove the container (shielded: a cancel does not stop it). Raises
        SandboxError when the engine failed; ``container_id`` is then kept."""
        container = self.container_id
        if container is None:
            return
        await asyncio.shield(self._engine(lambda: self.runtime.remove(container)))
        self.container_id = None

    # -- signals ---------------------------------------------------------------------
    async def signal_kernel(self, signum: int) -> bool | None:
        """*signum* to the kernel's process group through init: True if sent, False if
        init refused (no kernel runs), None when init did not answer."""
        try:
            reply = await self.init.request({"op": "signal", "signum": int(signum)},
                                            timeout=SIGNAL_TIMEOUT_S)
        except InitUnavailable:
            return None
        return bool(reply.get("ok"))

    async def signal_container(self, signum: int) -> None:
        """``docker kill -s``: init forwards SIGINT to the kernel; SIGTERM ends the box."""
        if self.container_id is not None:
            container = self.container_id
            with contextlib.suppress(SandboxError):
                await self._engine(lambda: self.runtime.signal(container, int(signum)))

    async def interrupt(self) -> None:
        """SIGINT to the kernel (KeyboardInterrupt in the running cell)."""
        if not await self.signal_kernel(signal.SIGINT):
            await self.signal_container(signal.SIGINT)

    async def kill_processes(self) -> bool:
        """Init kills every process in the container (the container stays). False when
        init refused or did not answer."""
        with contextlib.suppress(InitUnavailable):
            reply = await self.init.request({"op": "kill"}, timeout=KILL_TIMEOUT_S)
            return bool(reply.get("ok"))
        return False

    # -- state and death ---------------------------------------------------------------
    async def state(self) -> ContainerState:
        container = self.container_id or ""
        return await self._engine(lambda: self.runtime.state(container))

    async def running(self) -> bool:
        """False once the engine says the container stopped (True when it cannot tell)."""
        if self.container_id is None:
            return False
        try:
            return (await self.state()).running
        except SandboxError:
            return True  # the engine hiccuped: let the deadline decide

    async def wait_death(self, generation: int) -> KernelDeath:
        """Wait (for the kernel's lifetime) until kernel *generation* exits; why it did."""
        info = await self.init.wait_exit(generation)
        if info is not None:
            return death_from_exit(info, self.config.memory_mb)
        return await self.diagnose_lost_init()

    async def exit_report(self, timeout: float = SIGNAL_TIMEOUT_S) -> KernelDeath | None:
        """Init's report on the current kernel's exit, if it gives one within *timeout*."""
        with contextlib.suppress(InitUnavailable):
            reply = await self.init.request(
                {"op": "wait", "generation": self.init_generation}, timeout=timeout)
            info = reply.get("exit")  # untrusted: from inside the box
            if isinstance(info, dict):
                return death_from_exit(info, self.config.memory_mb)
        return None

    async def diagnose_lost_init(self) -> KernelDeath:
        """Init's connection broke: find out whether the container is gone. The box is
        suspect from now on (its init cannot be trusted to restart a kernel)."""
        self.suspect = True
        end = time.monotonic() + DEATH_CONFIRM_S
        while True:
            try:
                state = await self.state()
            except SandboxError as exc:
                return KernelDeath(reason=f"lost contact with the container ({exc})",
                                   container_gone=True)
            if not state.running:
                return death_from_state(state, self.config.memory_mb)
            if time.monotonic() >= end:
                return KernelDeath(reason="lost contact with the container's init process",
                                   container_gone=False)
            await asyncio.sleep(0.05)
