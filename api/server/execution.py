"""How the service runs cells: the code's checks, a plain execute and its history row,
and the server-sent event stream (a detached pump runs the cell to its end and records
it whatever the client does). SandboxService (api/server/service.py) is one of these."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from api._sse import KEEPALIVE
from api.server.errors import ApiError
from api.server.live import END, LiveFeed
from api.server.metrics import Metrics
from api.server.settings import Settings
from api.server.store import HistoryStore
from sandbox import AsyncSession, ExecutionResult, SessionBusyError

log = logging.getLogger("agentbox.api")


class Executions:
    """The execute and stream half of SandboxService; the owner gives the session."""

    settings: Settings
    store: HistoryStore
    metrics: Metrics
    _pumps: set[asyncio.Task[Any]]

    def session(self, key_id: str, session_id: str) -> AsyncSession:
        raise NotImplementedError

    def _check_code(self, code: str, timeout_s: float | None) -> None:
        if len(code.encode("utf-8", "surrogatepass")) > self.settings.max_code_bytes:
            raise ApiError(413, "code_too_large", f"code exceeds {self.settings.max_code_bytes}"
                           " bytes")
        if timeout_s is not None and timeout_s > self.settings.max_execution_timeout_s:
            raise ApiError(422, "limit_exceeded", f"timeout_s = {timeout_s} exceeds the "
                           f"server's maximum of {self.settings.max_execution_timeout_s}")

    async def _record(self, session_id: str, code: str, result: ExecutionResult,
                      started_at: float) -> dict[str, Any]:
        body = result.to_dict()
        said: list[str] = []
        await self.store.add_execution(session_id, code, body, started_at, said)
        if said:  # the history's caps cut this row: the caller hears it too
            body["notes"] = [*body["notes"], *said]
        self.metrics.record(body)
        log.info("execution", extra={"session_id": session_id, "status": result.status,
                                     "duration_ms": body["duration_ms"],
                                     "truncated": result.truncated})
        return body

    async def execute(self, key_id: str, session_id: str, code: str,
                      timeout_s: float | None) -> dict[str, Any]:
        self._check_code(code, timeout_s)
        session = self.session(key_id, session_id)
        started = time.time()
        result = await session.execute(code, timeout=timeout_s, wait=False)
        return await self._record(session_id, code, result, started)

    async def stream(self, key_id: str, session_id: str, code: str,
                     timeout_s: float | None) -> AsyncIterator[str]:
        """Server-sent events: ``output`` per output as published, then ``result``.
        Raises before the first event for bad input, so errors keep their status."""
        self._check_code(code, timeout_s)
        session = self.session(key_id, session_id)
        if session.busy:
            raise SessionBusyError(session_id)
        return self._events(session, session_id, code, timeout_s)

    def _detach(self, coro: Any, name: str) -> asyncio.Task[Any]:
        """A task that outlives the request that started it, in a fresh context: the
        cancel scope of a response whose client left cannot reach it. Shutdown waits."""
        task = asyncio.get_running_loop().create_task(coro, name=name,
                                                      context=contextvars.Context())
        self._pumps.add(task)
        task.add_done_callback(self._pumps.discard)
        return task

    async def _events(self, session: AsyncSession, session_id: str, code: str,
                      timeout_s: float | None) -> AsyncIterator[str]:
        """The response's side: frames from the feed, keep-alives while the cell is
        silent. The cell runs in the pump, not here, so a client that stops reading
        slows nothing down, and one that leaves still gets its cell recorded."""
        feed = LiveFeed(self.settings.sse_queue_bytes, self.settings.sse_queue_events)
        pump = self._detach(self._pump(session, session_id, code, timeout_s, feed),
                            name=f"agentbox-sse-{session_id}")
        try:
            while True:
                item = await feed.next(self.settings.keepalive_s)
                if item is None:
                    yield KEEPALIVE
                elif item is END:
                    break
                else:
                    yield item
        finally:
            if not pump.done():  # the client went away: interrupt the cell, keep recording
                feed.leave()
                self._detach(self._interrupt_quietly(session), name="agentbox-sse-interrupt")

    async def _pump(self, session: AsyncSession, session_id: str, code: str,
                    timeout_s: float | None, feed: LiveFeed) -> None:
        """Runs the cell to its end whatever the client does: live events into the
        bounded feed, the result into the history (before the session takes its next
        cell, so rows keep the order of execution) and then into the feed."""
        started = time.time()
        try:
            stream = session.stream(code, timeout=timeout_s, wait=False)
            async with contextlib.aclosing(stream) as events:
                async for item in events:
                    if isinstance(item, ExecutionResult):
                        note = feed.note()
                        if note is not None:
                            item.notes.append(note)
                        body = await self._record(session_id, code, item, started)
                        feed.finish("result", body)
                    else:
                        feed.offer("output", item.to_dict())
        except Exception as exc:
            feed.finish("error", self._error_body(exc))
        finally:
            feed.close()
            if feed.lagging:
                log.info("sse client fell behind", extra={
                    "session_id": session_id, "missed_events": feed.missed,
                    "queued_peak_bytes": feed.peak_bytes})

    @staticmethod
    def _error_body(exc: Exception) -> dict[str, Any]:
        from api.server.errors import to_response

        response = to_response(exc)
        body: dict[str, Any] = json.loads(bytes(response.body))
        body["error"]["status"] = response.status_code
        return body

    @staticmethod
    async def _interrupt_quietly(session: AsyncSession) -> None:
        with contextlib.suppress(Exception):
            await session.interrupt()
