"""The events of one execution on their way to one event-stream (SSE) client, bounded.

The cell writes at the box's pace; the client reads at its own. Between the two
sits this feed, filled by the service's pump (which always keeps reading the
session, so the cell, its kept outputs and its history row never depend on the
client) and emptied by the response. It holds at most ``max_bytes`` of frames and
``max_events`` frames (one frame over an empty feed always gets in, else a big
display could never be sent). A client that falls that far behind gets a
``lagging`` event at once and no more live events; the final ``result`` (the whole
result, as JSON execute returns it) follows when the cell ends, and its notes say
how much was missed. Memory per client is the bound plus one frame.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from api._sse import frame
from sandbox.utils import human_bytes

END = "\0end"  # what next() returns once the final frame has been taken


class LiveFeed:
    """Single producer (the pump), single consumer (the response). Not thread-safe."""

    def __init__(self, max_bytes: int, max_events: int) -> None:
        self.max_bytes, self.max_events = max_bytes, max_events
        self._frames: deque[str] = deque()
        self._bytes = 0
        self._ready = asyncio.Event()
        self._finished = False
        self.lagging = False
        self.gone = False  # the client left
        self.missed = 0
        self.missed_bytes = 0
        self.peak_bytes = 0

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def offer(self, event: str, data: Any) -> bool:
        """Queue a live event; False when it is dropped (the client is behind or gone)."""
        if self.gone or self.lagging:
            self.missed += 1
            return False
        text = frame(event, data)
        if self._frames and (self._bytes + len(text) > self.max_bytes
                             or len(self._frames) >= self.max_events):
            self.lagging = True
            self.missed += 1
            self.missed_bytes += len(text)
            self._push(frame("lagging", {
                "message": f"this client reads slower than the cell writes: "
                           f"{len(self._frames)} events ({human_bytes(self._bytes)}) are "
                           "queued for it, the most a client may have waiting; no more "
                           "live events are sent, and the result at the end holds every "
                           "kept output",
                "queued_events": len(self._frames), "queued_bytes": self._bytes}))
            return False
        self._push(text)
        return True

    def finish(self, event: str, data: Any) -> None:
        """The last frame (``result`` or ``error``): always queued, whatever the bounds."""
        if not self._finished:
            self._push(frame(event, data))
            self._finished = True
            self._ready.set()

    def close(self) -> None:
        """The producer is done (after finish(), or without a final frame)."""
        self._finished = True
        self._ready.set()

    def leave(self) -> None:
        """The consumer is gone: drop what is queued and everything that comes."""
        self.gone = True
        self._frames.clear()
        self._bytes = 0

    def note(self) -> str | None:
        """What the result should say about this client's live feed, if anything."""
        if self.gone:
            return ("the client disconnected before the cell ended; the cell was "
                    "interrupted and its result is recorded in the history")
        if self.lagging:
            return (f"live events: {self.missed} event(s) were not sent to this client, "
                    f"which read slower than the cell wrote (at most {self.max_events} "
                    f"events or {human_bytes(self.max_bytes)} wait for one client); this "
                    "result holds every kept output")
        return None

    def _push(self, text: str) -> None:
        self._frames.append(text)
        self._bytes += len(text)
        self.peak_bytes = max(self.peak_bytes, self._bytes)
        self._ready.set()

    async def next(self, timeout: float) -> str | None:
        """The next frame, END after the last, or None when *timeout* passes first."""
        while not self._frames:
            if self._finished:
                return END
            self._ready.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._ready.wait()
            except TimeoutError:
                return None
        text = self._frames.popleft()
        self._bytes -= len(text)
        return text
