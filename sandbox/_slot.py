"""The kernel in a session's box, one generation at a time.

Each kernel the session starts (first start, a restart in place, a replaced box)
is a generation: a connection file and sockets of its own (``kernel-<g>-*.json``,
``k<g>-<port>``, a fresh key), a :class:`~sandbox._kernel.KernelConnection`, and a
death watch (a request to init that is answered when that kernel exits).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

from sandbox._box import Box
from sandbox._config import SandboxConfig
from sandbox._endpoint import KernelEndpoint, clear_run_dir, write_endpoint
from sandbox._kernel import KernelConnection
from sandbox._models import KernelDeath
from sandbox._rundir import make_run_dir
from sandbox._tasks import cancel_and_wait

ConnectionFactory = Callable[..., KernelConnection]
DeathHandler = Callable[[KernelDeath], None]


class KernelSlot:
    """``kernel`` is the current generation's connection (None between two)."""

    def __init__(self, box: Box, config: SandboxConfig, run_dir: Path,
                 connection: ConnectionFactory, on_death: DeathHandler) -> None:
        self.box = box
        self.config = config
        self.run_dir = run_dir
        self.kernel: KernelConnection | None = None
        self.generation = 0  # ours: names the connection file and sockets
        self._connection = connection
        self._on_death = on_death
        self._watch: asyncio.Task[None] | None = None

    def _next_endpoint(self) -> KernelEndpoint:
        self.generation += 1
        return write_endpoint(self.run_dir, self.generation, self.config.uid, self.config.gid)

    async def launch(self, deadline: float, phases: dict[str, float], *,
                     replace: bool = False) -> None:
        """A box (in place of the old one if *replace*: files lost) and its kernel, by
        *deadline*. How long the container took goes into *phases* as soon as it is up
        (``container_start``: a start that fails later failed in the kernel's phase), then
        the kernel's (``kernel_ready``)."""
        t0 = time.monotonic()
        endpoints: list[KernelEndpoint] = []

        def prepare() -> str:
            if replace:
                clear_run_dir(self.run_dir)
            elif not self.run_dir.exists():
                make_run_dir(self.run_dir, self.config.uid, self.config.gid)
            endpoints.append(self._next_endpoint())
            return endpoints[-1].connection_file

        await self.drop()
        if replace:
            await self.box.replace(prepare)
        else:
            await self.box.launch(prepare())
        t1 = time.monotonic()
        phases["container_start"] = t1 - t0
        await self._attach(endpoints[-1], deadline)
        phases["kernel_ready"] = time.monotonic() - t1

    async def restart_in_place(self, deadline: float) -> None:
        """Kill everything in the box and start a fresh kernel there (files kept).
        Raises SandboxError (InitUnavailable, DeadlineExceeded, ...) when that failed."""
        old = self.kernel.endpoint if self.kernel is not None else None
        await self.drop()
        endpoints: list[KernelEndpoint] = []

        def prepare() -> str:
            self._remove_files(old)
            endpoints.append(self._next_endpoint())
            return endpoints[-1].connection_file

        await self.box.restart_kernel(prepare)
        await self._attach(endpoints[-1], deadline)

    async def _attach(self, endpoint: KernelEndpoint, deadline: float) -> None:
        kernel = self._connection(endpoint, max_message_bytes=self.config.max_message_bytes,
                                  container_id=self.box.container_id)
        try:
            await kernel.connect(self.run_dir, deadline, alive=self.box.running)
        except BaseException:
            await kernel.close()
            raise
        self.kernel = kernel
        self._watch = asyncio.create_task(self._watch_for_exit(self.box.init_generation))

    async def _watch_for_exit(self, init_generation: int) -> None:
        """Waits on agentbox-init for this kernel's exit; runs for the kernel's lifetime."""
        self._on_death(await self.box.wait_death(init_generation))

    async def drop(self) -> None:
        """Stop watching and close the connection (the kernel itself is the box's)."""
        task, self._watch = self._watch, None
        await cancel_and_wait(task)
        kernel, self.kernel = self.kernel, None
        if kernel is not None:
            await kernel.close()

    def _remove_files(self, endpoint: KernelEndpoint | None) -> None:
        if endpoint is None:
            return
        for path in (self.run_dir / endpoint.connection_file,
                     *endpoint.socket_paths(self.run_dir)):
            with contextlib.suppress(OSError):
                path.unlink()
