"""The synchronous facade, for scripts and notebooks: derived from the async API.

Each :class:`Session` drives its :class:`AsyncSession` on an event loop in a
background thread (anyio's blocking portal), so the same code path serves
both; nothing is implemented twice.
"""

from __future__ import annotations

import asyncio
import concurrent.futures.thread  # noqa: F401 - registers its exit hook before ours (see below)
import contextlib
import queue
import sys
import threading
import weakref
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

from anyio.from_thread import BlockingPortal, start_blocking_portal

from sandbox._compat import register_atexit_before_threads
from sandbox._config import SandboxConfig
from sandbox._models import ExecutionResult, FileInfo, KernelDeath, SessionInfo
from sandbox._outputs import Event
from sandbox._session import AsyncSession, SessionState

_END = object()
STREAM_BACKLOG = 256  # events a sync stream's reader may fall behind by
STREAM_STALL_S = 10.0  # a reader that takes nothing for this long gets no more live events
_open_sessions: weakref.WeakSet[Session] = weakref.WeakSet()


def _close_open_sessions() -> None:
    """At interpreter exit, close what the program forgot to, while the portal threads
    still run. Registered with threading's own exit hooks, which run (last registered,
    first) before concurrent.futures stops its workers; a plain atexit hook is too late."""
    for session in list(_open_sessions):
        with contextlib.suppress(Exception):
            session.close()


class Session:
    """A sandbox for synchronous code: ``with Session() as s: s.execute("1 + 1")``."""

    def __init__(self, config: SandboxConfig | None = None, **kwargs: Any) -> None:
        self._portal_cm: AbstractContextManager[BlockingPortal] = start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        self._closed = False
        try:
            self._async: AsyncSession = self._portal.call(
                lambda: _make(config, kwargs))
        except BaseException:
            self._stop_portal()
            raise

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> Session:
        _open_sessions.add(self)
        try:
            self._portal.call(self._async.start)
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> Session:
        if self._async.state is SessionState.NEW:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the container and host files; idempotent."""
        if self._closed:
            return
        _open_sessions.discard(self)
        try:
            self._portal.call(self._async.close)
        finally:
            self._closed = True
            self._stop_portal()

    def _stop_portal(self) -> None:
        self._portal_cm.__exit__(None, None, None)

    def __del__(self) -> None:  # a forgotten session must not leak a container
        if sys.is_finalizing():
            return  # too late to use threads; _close_open_sessions ran before this
        if not getattr(self, "_closed", True):
            with contextlib.suppress(Exception):  # best effort during garbage collection
                self.close()

    # -- delegated -------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self._async.id

    @property
    def state(self) -> SessionState:
        return self._async.state

    @property
    def info(self) -> SessionInfo:
        return self._async.info

    @property
    def death(self) -> KernelDeath | None:
        return self._async.death

    @property
    def config(self) -> SandboxConfig:
        return self._async.config

    def execute(self, code: str, *, timeout: float | None = None, wait: bool = True,
                on_output: Callable[[Event], Any] | None = None) -> ExecutionResult:
        """Run *code* and return its result; *on_output* is called in this thread."""
        if on_output is None:
            result: ExecutionResult = self._portal.call(
                lambda: self._async.execute(code, timeout=timeout, wait=wait))
            return result
        final: ExecutionResult | None = None
        for event in self.stream(code, timeout=timeout, wait=wait):
            if isinstance(event, ExecutionResult):
                final = event
            else:
                on_output(event)
        assert final is not None
        return final

    def stream(self, code: str, *, timeout: float | None = None,
               wait: bool = True) -> Iterator[Event | ExecutionResult]:
        """Each output as it is published, then the result (see AsyncSession.stream).

        At most STREAM_BACKLOG events wait for this thread: a caller that reads slowly
        holds the cell's output back (the session's own bounds apply from there), it
        does not grow this process. A caller that takes nothing for STREAM_STALL_S (it
        left the loop without closing the iterator, say) gets no more live events; the
        cell runs to its end, and the result it then gets says what it missed. Close
        the iterator (``contextlib.closing``) to end the cell at once."""
        events: queue.Queue[Any] = queue.Queue()
        stop = threading.Event()
        room: list[tuple[asyncio.AbstractEventLoop, asyncio.Semaphore]] = []

        async def pump() -> None:
            await self._pump(self._async.stream(code, timeout=timeout, wait=wait),
                             events, stop, room)

        future = self._portal.start_task_soon(pump)
        try:
            while True:
                item = events.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                loop, slots = room[0]
                loop.call_soon_threadsafe(slots.release)
                yield item
        finally:
            stop.set()
            if room:
                loop, slots = room[0]
                loop.call_soon_threadsafe(slots.release)  # a pump waiting for room sees stop
            future.result()

    @staticmethod
    async def _pump(stream: AsyncGenerator[Event | ExecutionResult, None],
                    events: queue.Queue[Any], stop: threading.Event,
                    room: list[tuple[asyncio.AbstractEventLoop, asyncio.Semaphore]]) -> None:
        """On the portal's loop: *stream*'s items into *events*, at most STREAM_BACKLOG
        ahead of the reader (see :meth:`stream`), then ``_END``."""
        slots = asyncio.Semaphore(STREAM_BACKLOG)
        room.append((asyncio.get_running_loop(), slots))
        missed = 0
        try:
            async with contextlib.aclosing(stream) as running:
                async for event in running:
                    if isinstance(event, ExecutionResult):
                        if missed:
                            event.notes.append(
                                f"{missed} live event(s) were not delivered: the reader "
                                f"took none for {STREAM_STALL_S:g}s; the outputs above "
                                "are complete")
                        events.put(event)
                        break
                    if missed:
                        missed += 1
                        continue
                    try:
                        async with asyncio.timeout(STREAM_STALL_S):
                            await slots.acquire()
                    except TimeoutError:
                        missed += 1
                        continue
                    events.put(event)
                    if stop.is_set():
                        break
        except BaseException as exc:
            events.put(exc)
        finally:
            events.put(_END)

    def interrupt(self) -> None:
        self._portal.call(self._async.interrupt)

    def restart(self) -> None:
        self._portal.call(self._async.restart)

    def upload(self, path: str, data: bytes | str) -> None:
        self._portal.call(self._async.upload, path, data)

    def download(self, path: str) -> bytes:
        data: bytes = self._portal.call(self._async.download, path)
        return data

    def list_files(self, path: str = "") -> list[FileInfo]:
        files: list[FileInfo] = self._portal.call(self._async.list_files, path)
        return files

    def delete_file(self, path: str) -> None:
        self._portal.call(self._async.delete_file, path)

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.state.value}>"


async def _make(config: SandboxConfig | None, kwargs: dict[str, Any]) -> AsyncSession:
    return AsyncSession(config, **kwargs)


register_atexit_before_threads(_close_open_sessions)
