"""Baselines more than one suite measures beside its subject in the same run: an
ipykernel on the host (driven by jupyter_client) and the engine's bare ``docker run``."""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Any

# Same kernel settings as the image's ipython_kernel_config.py, so a ratio shows what the
# container adds, not what a different configuration costs.
HOST_KERNEL_ARGS = ["--HistoryManager.hist_file=:memory:", "--IPCompleter.use_jedi=False",
                    "--InteractiveShell.colors=NoColor"]


class LocalKernel:
    """An ipykernel on the host, driven by jupyter_client: the baseline for every cell."""

    def __init__(self) -> None:
        self.km: Any = None
        self.kc: Any = None

    async def start(self) -> float:
        """Start and wait until the kernel answers; returns the seconds that took."""
        from jupyter_client.manager import AsyncKernelManager

        t0 = time.perf_counter()
        self.km = AsyncKernelManager(kernel_name="python3")
        # The kernel's own warnings (TCP without encryption...) would break up the progress
        # display; a kernel that fails to start still fails wait_for_ready.
        await self.km.start_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   extra_arguments=HOST_KERNEL_ARGS)
        self.kc = self.km.client()
        self.kc.start_channels()
        await self.kc.wait_for_ready(timeout=30)
        return time.perf_counter() - t0

    async def shutdown(self) -> float:
        t0 = time.perf_counter()
        kc, self.kc = self.kc, None
        km, self.km = self.km, None
        if kc is not None:
            kc.stop_channels()
        if km is not None and km.has_kernel:
            await km.shutdown_kernel(now=True)
        return time.perf_counter() - t0

    @property
    def pid(self) -> int:
        """The kernel process's id (for its memory in /proc)."""
        return int(self.km.provisioner.process.pid)

    async def execute(self, code: str) -> tuple[float, dict[str, Any], list[dict[str, Any]]]:
        """Run *code*; wait for the execute_reply and the 'idle' status. Returns the
        seconds, the reply, and the IOPub messages (collected, not printed)."""
        msgs: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        reply = await self.kc.execute_interactive(code, timeout=60, allow_stdin=False,
                                                  output_hook=msgs.append)
        return time.perf_counter() - t0, reply, msgs


async def docker_run_floor(client: Any, image: str) -> float:
    """``docker run --rm --network none IMAGE true``: create, start, wait, remove; the
    floor any container start pays (*client*: a docker SDK client)."""
    def run() -> None:
        client.containers.run(image, ["true"], entrypoint=[], remove=True, network_mode="none")

    t0 = time.perf_counter()
    await asyncio.to_thread(run)  # the library drives the engine from a thread, too
    return time.perf_counter() - t0
