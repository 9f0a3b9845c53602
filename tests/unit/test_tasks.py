"""Stopping helper tasks and finishing work a cancelled caller began (sandbox/_tasks.py).

The bug these pin: ``task.cancel(); with suppress(CancelledError): await task`` also
swallowed the cancellation of the task doing the waiting. A reaper pass cancelled while
it closed a session went on reaping, and the shutdown that cancelled it waited forever
(tests/engine/test_manager.py hit it in CI: a 300 s timeout in the selector).
"""

from __future__ import annotations

import asyncio

import pytest

from sandbox._tasks import cancel_and_wait, run_to_end


async def slow_to_stop(stopping_s: float, ended: list[str]) -> None:
    """A helper that needs a moment to end when cancelled (closing a socket, a thread)."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        await asyncio.sleep(stopping_s)
        ended.append("helper")
        raise


async def test_a_cancelled_caller_is_not_kept_running_by_the_wait_for_its_helper() -> None:
    ended: list[str] = []
    steps: list[str] = []

    async def worker() -> None:
        helper = asyncio.create_task(slow_to_stop(0.2, ended))
        await asyncio.sleep(0)
        await cancel_and_wait(helper)
        steps.append("went on after its helper stopped")  # must not happen

    task = asyncio.create_task(worker())
    await asyncio.sleep(0.05)  # the worker waits for its helper to stop
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=5)
    assert done and task.cancelled()
    assert steps == []


async def test_the_helpers_own_cancellation_or_failure_is_not_the_callers() -> None:
    ended: list[str] = []

    async def fails_when_stopped() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise RuntimeError("stopping failed") from None

    helpers = [asyncio.create_task(slow_to_stop(0.01, ended)),
               asyncio.create_task(fails_when_stopped())]
    await asyncio.sleep(0)
    await cancel_and_wait(*helpers, None)  # returns: both ended, neither error is raised
    assert all(h.done() for h in helpers) and ended == ["helper"]
    await cancel_and_wait()  # nothing to stop


async def test_work_run_to_its_end_finishes_before_the_cancellation_goes_up() -> None:
    steps: list[str] = []

    async def removal() -> str:
        await asyncio.sleep(0.2)
        steps.append("removed")
        return "done"

    async def closer() -> None:
        await run_to_end(removal())
        steps.append("after")  # must not happen: the caller was cancelled

    task = asyncio.create_task(closer())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert steps == ["removed"]
    assert await run_to_end(removal()) == "done"  # not cancelled: its result


async def test_a_second_cancel_stops_the_wait_and_the_work_still_ends() -> None:
    steps: list[str] = []
    finished = asyncio.Event()

    async def removal() -> None:
        await asyncio.sleep(0.3)
        steps.append("removed")
        finished.set()

    task = asyncio.create_task(run_to_end(removal()))
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.sleep(0.05)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=0.1)  # long before the removal ends
    assert done and task.cancelled() and steps == []
    await asyncio.wait_for(finished.wait(), 5)
    assert steps == ["removed"]
