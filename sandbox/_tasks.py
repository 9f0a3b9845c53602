"""Two asyncio idioms that are easy to get wrong, kept in one place.

- :func:`cancel_and_wait` stops helper tasks. The usual ``task.cancel()`` followed by
  ``with suppress(CancelledError): await task`` also swallows a cancellation *of the
  caller* that arrives while it waits: the caller goes on as if nobody had asked it to
  stop. A reaper pass cancelled that way kept running, and the shutdown that cancelled
  it waited for it forever.
- :func:`run_to_end` runs work that must finish once begun (a container's removal): a
  cancelled caller waits for it to end, and only then gets its ``CancelledError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# Work that run_to_end left running after a second cancel: referenced here until it
# ends (the loop keeps only weak references to tasks).
_unwaited: set[asyncio.Future[Any]] = set()


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel *tasks* and wait until each has ended, however it ended (its own
    cancellation or failure is not the caller's). A cancellation of the caller while it
    waits goes up, like any other."""
    pending = [t for t in tasks if t is not None]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)  # raises only for the caller's own cancellation
    for task in pending:
        if not task.cancelled():
            task.exception()  # retrieved, so that asyncio does not log it as lost


async def run_to_end(work: Coroutine[Any, Any, T]) -> T:
    """Await *work* in a task that a cancellation of the caller does not stop. A caller
    cancelled meanwhile waits until the work has ended, then gets its cancellation; a
    second cancellation stops that wait (the work goes on in its task)."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            _unwaited.add(task)
            task.add_done_callback(_unwaited.discard)
            await asyncio.wait([task])
            if not task.cancelled():
                task.exception()  # the cancellation is what the caller asked about
        raise
