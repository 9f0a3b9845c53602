"""One request's messages, in arrival order, with a byte budget (back-pressure)."""

from __future__ import annotations

import asyncio
import collections
from typing import Any, cast

ROUTE_BUDGET = 8 << 20  # bytes of parsed messages waiting for one execution's reader


def message_size(msg: dict[str, Any]) -> int:
    return cast(int, msg.get("_size", 0))


class Route:
    """One request's messages in arrival order (replies from shell, outputs from IOPub,
    events the session posts). The pump waits while more than *budget* bytes are
    unread, so a reader that falls behind slows the kernel down instead of growing the
    host: the kernel's IOPub socket then drops on its own side."""

    def __init__(self, budget: int = ROUTE_BUDGET) -> None:
        self.budget = budget
        self.size = 0
        self.closed = False
        self._items: collections.deque[tuple[str, dict[str, Any], int]] = collections.deque()
        self._readable = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def put_nowait(self, item: tuple[str, dict[str, Any]], size: int = 0) -> None:
        if self.closed:
            return
        self._items.append((*item, size))
        self.size += size
        self._readable.set()
        if self.size > self.budget:
            self._room.clear()

    async def put(self, item: tuple[str, dict[str, Any]], size: int) -> None:
        """Called by the pumps: waits for room (one item is always admitted)."""
        while self.size > 0 and self.size + size > self.budget and not self.closed:
            self._room.clear()
            await self._room.wait()
        self.put_nowait(item, size)

    async def get(self) -> tuple[str, dict[str, Any]]:
        while not self._items:
            self._readable.clear()
            await self._readable.wait()
        channel, msg, size = self._items.popleft()
        self.size -= size
        if self.size <= self.budget:
            self._room.set()
        return channel, msg

    def empty(self) -> bool:
        return not self._items

    def close(self) -> None:
        self.closed = True
        self._items.clear()
        self.size = 0
        self._room.set()

