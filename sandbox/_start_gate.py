"""The manager's start line: at most *slots* session starts at once, the rest in line.

A burst of starts on a few cores would all miss their deadlines together, so callers
wait in line, first come first served, each until its own deadline; the gate measures
how long a start holds its slot, so that a caller whose wait would be too long is told
at once (pure logic, tested without Docker in ``tests/unit/test_start_gate.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque

# What a start is taken to cost before one has been measured (runc here: ~1-2 s).
TYPICAL_START_SEED_S = 2.0


class LineTooLong(Exception):
    """A caller in line cannot get a slot before its deadline, as far as the gate can
    tell now that it has measured more starts: it is told at once, not at its deadline."""

    def __init__(self, wait_s: float) -> None:
        super().__init__(f"{wait_s:.1f}s")
        self.wait_s = wait_s


class StartGate:
    """At most *slots* session starts at once; the rest wait in line, first come first
    served, each until its own deadline. Background starts (pool refills) wait behind
    every caller. Also keeps a moving average of how long a start holds its slot, so
    that a caller can be told at once when its wait would be too long, and a caller in
    line is told as soon as the measured starts say it cannot make its deadline."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.active = 0
        self.typical_s = TYPICAL_START_SEED_S
        # (turn, deadline): a turn's result is the slot; its exception, a refusal.
        self._line: deque[tuple[asyncio.Future[None], float | None]] = deque()
        self._background: deque[tuple[asyncio.Future[None], float | None]] = deque()

    @property
    def waiting(self) -> int:
        """Callers in line (not counting background starts)."""
        return sum(1 for turn, _ in self._line if not turn.done())

    def expected_wait_s(self) -> float:
        """How long a caller who joins the line now can expect to wait for a slot: every
        caller ahead of it, and then itself, needs a start to end first."""
        if self.active < self.slots and not self.waiting:
            return 0.0
        return (self.waiting + 1) * self.typical_s / self.slots

    async def acquire(self, deadline: float | None = None, *, background: bool = False) -> None:
        """Wait for a slot until *deadline* (monotonic; None: no limit). TimeoutError when
        the deadline passes first, LineTooLong when it clearly will; the caller must
        :meth:`release` a slot it got."""
        ahead = self.waiting > 0 or (background and any(not t.done() for t, _ in self._background))
        if self.active < self.slots and not ahead:
            self.active += 1
            return
        line = self._background if background else self._line
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (turn, deadline)
        line.append(entry)
        try:
            async with asyncio.timeout_at(deadline):
                await turn
        except BaseException:
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                self._hand_on()  # given the slot in the same instant it gave up
            with contextlib.suppress(ValueError):
                line.remove(entry)
            raise

    def close(self, exc: BaseException) -> None:
        """Fail everyone in line with *exc* (the manager is shutting down)."""
        for line in (self._line, self._background):
            while line:
                turn, _ = line.popleft()
                if not turn.done():
                    turn.set_exception(exc)

    def release(self, held_s: float) -> None:
        """Give a slot back after holding it for *held_s* seconds."""
        self.typical_s = 0.7 * self.typical_s + 0.3 * max(0.0, held_s)
        self._hand_on()
        self._refuse_hopeless()

    def _hand_on(self) -> None:
        # The slot goes straight to the next in line (so nobody can overtake the line
        # between a release and the waiter's wake-up); without one it is freed.
        for line in (self._line, self._background):
            while line:
                turn, _ = line.popleft()
                if not turn.done():
                    turn.set_result(None)
                    return
        self.active -= 1

    def _refuse_hopeless(self) -> None:
        """Tell the callers in line who cannot get a slot before their deadline, at the
        pace starts go now. Optimistic on purpose (the one at the head is never told:
        the next slot is its own), so that nobody is refused who would have made it."""
        now, position = time.monotonic(), 0
        for turn, deadline in list(self._line):
            if turn.done():
                continue
            wait = position * self.typical_s / self.slots
            position += 1
            if deadline is not None and now + wait > deadline:
                turn.set_exception(LineTooLong(wait))
