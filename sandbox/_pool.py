"""A warm pool of started sessions with the default settings.

Taking one costs a dictionary pop: the container is up and its kernel has
answered. The pool refills in the background, one start at a time (starts
compete for the same two cores; serial refills keep a burst of takes from
slowing every other session's cells), and each refill waits for a start slot
of the manager behind every caller's cold start (a burst of creates is not
slowed by refills of the pool it just emptied). A pooled session is handed out
once and never returned: its kernel has run someone's code.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from sandbox._exceptions import SandboxError
from sandbox._session import AsyncSession, SessionState
from sandbox._tasks import cancel_and_wait

log = logging.getLogger("sandbox.pool")


class WarmPool:
    """Keeps up to *size* ready sessions made by *factory*. Owned by the SessionManager."""

    def __init__(self, size: int, factory: Callable[[], Awaitable[AsyncSession]]) -> None:
        self.size = size
        self._factory = factory
        self._ready: deque[AsyncSession] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.failures = 0
        self.last_error: str | None = None

    @property
    def level(self) -> int:
        return len(self._ready)

    def start(self) -> None:
        if self.size > 0 and self._task is None:
            self._task = asyncio.create_task(self._fill(), name="agentbox-pool-fill")

    def take(self) -> AsyncSession | None:
        """A ready session, or None when the pool is empty; triggers a refill."""
        while self._ready:
            session = self._ready.popleft()
            if session.state is SessionState.READY:
                self._wake.set()
                session.from_pool = True
                return session
            asyncio.get_running_loop().create_task(session.close())  # died while pooled
        self._wake.set()
        return None

    async def _fill(self) -> None:
        backoff = 0.5
        while not self._closed:
            # Drop sessions whose kernel died while they waited.
            for session in [s for s in self._ready if s.state is not SessionState.READY]:
                self._ready.remove(session)
                await session.close()
            if len(self._ready) >= self.size:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                session = await self._factory()
            except asyncio.CancelledError:
                raise
            except SandboxError as exc:
                self.failures += 1
                self.last_error = str(exc)
                # The start's own failure (session id, phase, reason) is logged where it
                # failed; this line says what the pool does about it.
                log.warning("warm pool: refill failed (%d so far); next try in %.1fs",
                            self.failures, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 0.5
            if self._closed:
                await session.close()
                return
            self._ready.append(session)

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        await cancel_and_wait(task)
        sessions = list(self._ready)
        self._ready.clear()
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
