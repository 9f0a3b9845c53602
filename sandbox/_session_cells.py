"""What a session's cell runs need of it, apart from its state machine.

- :class:`CellBox`: the session as one cell run sees it (``sandbox._cell.Controls``):
  the life lock to hold, and the interrupt → restart → replace ladder;
- :class:`Abandoned`: cells whose caller went away mid-run. Each is interrupted and
  ended in a task of its own; the session's next cell waits until it really ended
  (else the kernel would abort the next one).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from sandbox._cell import IOPUB_GRACE_S, CellRun, abandon
from sandbox._exceptions import SandboxError
from sandbox._kernel import KernelConnection

if TYPE_CHECKING:
    from sandbox._session import AsyncSession

log = logging.getLogger("sandbox.session")


class CellBox:
    """The session as a cell run sees it (``sandbox._cell.Controls``). Nothing is
    started for a session that was closed meanwhile (*closed* says whether it is)."""

    def __init__(self, session: AsyncSession, kernel: KernelConnection,
                 closed: Callable[[], bool]) -> None:
        self._session = session
        self._kernel = kernel
        self._closed = closed

    def hold(self) -> asyncio.Lock:
        return self._session._life_lock

    async def interrupt(self) -> None:
        await self._session._box.interrupt()

    async def restart(self) -> bool:
        return self._closed() or await self._session._restart_in_place()

    async def replace(self) -> None:
        if not self._closed():
            await self._session._replace_container()

    async def reconnect_iopub(self) -> None:
        if self._session._kernel is self._kernel:
            await self._kernel.reconnect_iopub()


class Abandoned:
    """The cell (at most one) of a session still ending after its caller left."""

    def __init__(self, session_id: str) -> None:
        self._session_id = session_id
        self._background: set[asyncio.Task[Any]] = set()
        self._draining: asyncio.Task[Any] | None = None

    async def wait(self) -> None:
        """Until the abandoned cell (if any) has ended; its failure is not this cell's."""
        if self._draining is not None:
            draining, self._draining = self._draining, None
            with contextlib.suppress(Exception):
                await asyncio.shield(draining)

    def end(self, run: CellRun, kernel: KernelConnection, msg_id: str,
            interrupt_grace_s: float) -> None:
        """Interrupt *run*, which nobody waits for any more, and end it in the background."""
        grace = interrupt_grace_s + IOPUB_GRACE_S
        self._draining = self._detach(self._abandon(run, kernel, msg_id, grace))

    def _detach(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[Any]:
        """In a task of its own, in a fresh context: a cancellation that keeps being
        re-delivered (anyio cancel scopes, as in Starlette) cannot stop it."""
        task = asyncio.get_running_loop().create_task(coro, context=contextvars.Context())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _abandon(self, run: CellRun, kernel: KernelConnection, msg_id: str,
                       grace_s: float) -> None:
        """Interrupt a cell nobody waits for any more; wait for it to end (or restart)."""
        try:
            await abandon(run, grace_s)
        except SandboxError as exc:
            log.warning("session %s: ending an abandoned cell failed: %s",
                        self._session_id, exc)
        finally:
            kernel.release(msg_id)
