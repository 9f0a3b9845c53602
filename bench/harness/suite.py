"""What every suite's measuring object starts from, and the pool turn two suites time."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.harness.cells import TRIVIAL, check_lib
from bench.harness.engine import docker_client, image_tag
from bench.harness.recorder import Recorder
from sandbox import SessionManager


class Suite:
    """The plan, the progress display, a Recorder, the engine and the kernel image."""

    def __init__(self, plan: Any, progress: Any) -> None:
        self.plan = plan
        self.progress = progress
        self.rec = Recorder()
        self.docker = docker_client()
        self.image = image_tag()

    def task(self, description: str, total: int) -> Callable[[int], None]:
        """A progress bar; the returned function advances it."""
        task = self.progress.add_task(description, total=total)
        return lambda k: self.progress.advance(task, k)


@dataclass(frozen=True)
class PoolTurn:
    acquired_s: float  # manager.create() returned
    ttfr_s: float  # ... and its first 1+1 came back
    from_pool: bool  # False: it started cold, not a pool figure
    closing_at: float  # perf_counter() when the close began (refill is timed from it)


async def pool_turn(manager: SessionManager) -> PoolTurn:
    """One session from *manager*, its first ``1+1`` (checked), then closed."""
    t0 = time.perf_counter()
    session = await manager.create()
    acquired = time.perf_counter() - t0
    try:
        result = await session.execute(TRIVIAL)
        ttfr = time.perf_counter() - t0
        check_lib(TRIVIAL, result)
    finally:
        closing_at = time.perf_counter()
        await manager.close(session.id)
    return PoolTurn(acquired, ttfr, session.from_pool, closing_at)
