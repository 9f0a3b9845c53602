"""The manager's start line (pure logic): slots, order, deadlines, estimates."""

from __future__ import annotations

import asyncio
import time

import pytest

from sandbox._start_gate import LineTooLong, StartGate


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_slots_are_taken_in_arrival_order_and_background_waits_behind_callers() -> None:
    gate = StartGate(1)
    await gate.acquire()
    order: list[str] = []

    async def take(name: str, background: bool = False) -> None:
        await gate.acquire(background=background)
        order.append(name)

    tasks = [asyncio.create_task(take("pool", background=True))]
    await settle()
    tasks += [asyncio.create_task(take(n)) for n in ("first", "second")]
    await settle()
    assert gate.waiting == 2 and gate.active == 1
    for _ in range(3):
        gate.release(1.0)
        await settle()
    await asyncio.gather(*tasks)
    assert order == ["first", "second", "pool"]
    gate.release(1.0)
    assert gate.active == 0


async def test_a_free_slot_is_not_taken_past_the_line() -> None:
    gate = StartGate(2)
    await gate.acquire()
    await gate.acquire()
    waiter = asyncio.create_task(gate.acquire())
    await settle()
    gate.release(1.0)  # goes to the waiter, not to whoever asks next
    await settle()
    assert waiter.done() and gate.active == 2
    late = asyncio.create_task(gate.acquire(time.monotonic() + 0.05))
    with pytest.raises(TimeoutError):
        await late
    assert gate.waiting == 0 and gate.active == 2


async def test_a_waiter_that_gives_up_leaves_the_line_and_loses_no_slot() -> None:
    gate = StartGate(1)
    await gate.acquire()
    gone = asyncio.create_task(gate.acquire())
    stays = asyncio.create_task(gate.acquire())
    await settle()
    gone.cancel()
    await settle()
    assert gate.waiting == 1
    gate.release(1.0)
    await stays
    assert gate.active == 1
    gate.release(1.0)
    assert gate.active == 0


async def test_a_slot_handed_to_a_waiter_as_it_is_cancelled_is_passed_on() -> None:
    gate = StartGate(1)
    await gate.acquire()
    first = asyncio.create_task(gate.acquire())
    second = asyncio.create_task(gate.acquire())
    await settle()
    gate.release(1.0)  # the slot is first's...
    first.cancel()  # ...but it is cancelled before it wakes up
    with pytest.raises(asyncio.CancelledError):
        await first
    await second
    assert gate.active == 1


def test_the_expected_wait_counts_everyone_ahead() -> None:
    gate = StartGate(2)
    assert gate.expected_wait_s() == 0.0
    gate.active = 2
    gate.typical_s = 3.0
    assert gate.expected_wait_s() == 1.5  # one of two slots frees in about half a start
    gate.release(1.0)  # the average moves towards what starts take now
    assert gate.typical_s == pytest.approx(0.7 * 3.0 + 0.3 * 1.0)


async def test_closing_fails_everyone_in_line_at_once() -> None:
    gate = StartGate(1)
    await gate.acquire()
    waiters = [asyncio.create_task(gate.acquire()),
               asyncio.create_task(gate.acquire(background=True))]
    await settle()
    gate.close(RuntimeError("shutting down"))
    for waiter in waiters:
        with pytest.raises(RuntimeError, match="shutting down"):
            await waiter
    gate.release(1.0)
    assert gate.active == 0 and gate.waiting == 0


async def test_who_cannot_make_its_deadline_at_the_measured_pace_is_told_at_once() -> None:
    gate = StartGate(1)
    gate.typical_s = 0.1  # what the line was admitted on
    await gate.acquire()
    deadline = time.monotonic() + 2.0
    first, second, third = (asyncio.create_task(gate.acquire(deadline)) for _ in range(3))
    await settle()
    gate.release(10.0)  # a start took 10 s: the pace is now about 3 s a start
    await settle()
    assert first.done() and not first.exception()  # it has the slot
    assert not second.done()  # the next slot is its own: never refused early
    with pytest.raises(LineTooLong):
        await third
    assert gate.waiting == 1
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    gate.release(1.0)
    assert gate.active == 0
