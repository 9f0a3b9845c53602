"""Engine calls that still work while the interpreter shuts down.

Jupyter front ends (``jupyter run``, ``jupyter console``) shut their kernel down from
an ``atexit`` handler, when the default executor refuses new work ("cannot schedule
new futures after interpreter shutdown"): the runtime's blocking calls then run on a
private loop in a thread of our own (:func:`run_in_own_thread`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from sandbox._exceptions import SandboxError

ENGINE_THREAD_TIMEOUT_S = 60.0  # an engine call made from a thread of our own (at exit)

T = TypeVar("T")


class _InlineExecutor(ThreadPoolExecutor):
    """Runs each job in the calling thread. The default executor of a private event
    loop in a thread of our own, used when every ThreadPoolExecutor refuses work
    (after interpreter shutdown began, i.e. in atexit handlers)."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        job: Future[T] = Future()
        try:
            job.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the awaiting coroutine
            job.set_exception(exc)
        return job


def run_in_own_thread(make: Callable[[], Awaitable[T]]) -> T:
    """Run the coroutine *make()* on a private loop in a thread of our own and wait
    (bounded) for it. Blocks the caller: only for the exit path, where it is wanted."""
    outcome: list[Any] = []

    async def main() -> T:
        asyncio.get_running_loop().set_default_executor(_InlineExecutor(max_workers=1))
        return await make()

    def target() -> None:
        try:
            outcome.append((True, asyncio.run(main())))
        except BaseException as exc:  # re-raised in the caller
            outcome.append((False, exc))

    worker = threading.Thread(target=target, name="agentbox-provisioner-exit", daemon=True)
    worker.start()
    worker.join(ENGINE_THREAD_TIMEOUT_S)
    if not outcome:
        raise SandboxError(f"the container engine did not answer within "
                           f"{ENGINE_THREAD_TIMEOUT_S:.0f}s")
    ok, value = outcome[0]
    if not ok:
        raise value
    result: T = value
    return result


async def engine_call(make: Callable[[], Awaitable[T]]) -> T:
    """``await make()``; when the default executor refuses the runtime's blocking call
    (RuntimeError "cannot schedule new futures after interpreter shutdown": a front end
    shuts its kernel down from atexit), the same call in a thread of our own."""
    try:
        return await make()
    except RuntimeError:
        return run_in_own_thread(make)
