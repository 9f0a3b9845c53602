"""The API benchmark's CPU meter (bench/suites/api/cpu.py): CPU time, not wall time, of
every thread of a process."""

from __future__ import annotations

import asyncio
import os
import time

from bench.suites.api.cpu import CpuMeter, cpu_between, thread_cpu_ns


def spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


async def test_work_in_any_thread_counts_and_waiting_does_not() -> None:
    meter = CpuMeter(os.getpid())  # this process plays the server too

    async def work() -> float:
        await asyncio.to_thread(spin, 0.05)  # another thread of the process
        return 0.0

    async def wait() -> float:
        await asyncio.sleep(0.05)
        return 0.0

    for _ in range(3):
        await meter.metered("work", work)()
        await meter.metered("wait", wait)()
    summary = meter.summary()
    assert summary["work"]["n"] == summary["wait"]["n"] == 3
    assert summary["work"]["server_ms"] >= 45 and summary["work"]["here_ms"] >= 45
    assert summary["wait"]["here_ms"] < 10  # 50 ms of wall time each, next to no CPU


def test_thread_cpu_ns_grows_with_work_only() -> None:
    before = thread_cpu_ns(os.getpid())
    spin(0.02)
    assert cpu_between(before, thread_cpu_ns(os.getpid())) >= 15_000_000


def test_a_thread_that_ends_between_readings_does_not_make_it_negative() -> None:
    before = {1: 5_000, 2: 90_000_000}  # thread 2, an idle worker, ends meanwhile
    after = {1: 7_000, 3: 1_000}  # thread 3 started meanwhile
    assert cpu_between(before, after) == 2_000 + 1_000
