"""CPU time per call, from the scheduler's own accounting: nanoseconds on a CPU, the same
whatever else the machine runs (wall time on these shared two-CPU machines is that, plus
every wait for a CPU). The server process and the benchmark's own process are counted;
the kernel's container is not, on either side."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

Side = Callable[[], Awaitable[float | None]]


def thread_cpu_ns(pid: int) -> dict[int, int]:
    """Nanoseconds each thread of process *pid* has run so far, by thread id
    (``/proc/PID/task/*/schedstat``, whose first field is that)."""
    found: dict[int, int] = {}
    for task in os.scandir(f"/proc/{pid}/task"):
        try:
            with open(f"{task.path}/schedstat") as f:
                found[int(task.name)] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return found


def cpu_between(before: dict[int, int], after: dict[int, int]) -> int:
    """CPU nanoseconds between two readings: each thread's growth, a new thread's whole
    time. A thread that ended in between is left out (a sum over the live threads would
    lose its whole past and could go below zero: idle worker threads do end)."""
    return sum(ns - before.get(tid, 0) for tid, ns in after.items())


class CpuMeter:
    """Wraps sides of a block so that each call's CPU time is added up: the server's (its
    process, all threads) and this process's (the client, or the library and its loop)."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.calls: dict[str, list[int]] = {}  # name -> [calls, server ns, here ns]

    def metered(self, name: str, side: Side) -> Side:
        async def run() -> float | None:
            # The reads of /proc stay outside this process's window.
            s0 = thread_cpu_ns(self.server_pid)
            h0 = time.process_time_ns()
            value = await side()
            h1 = time.process_time_ns()
            s1 = thread_cpu_ns(self.server_pid)
            acc = self.calls.setdefault(name, [0, 0, 0])
            acc[0] += 1
            acc[1] += cpu_between(s0, s1)
            acc[2] += h1 - h0
            return value

        return run

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per side: calls and the mean CPU milliseconds per call, server, here and both."""
        return {name: {"n": n, "server_ms": s / n / 1e6, "here_ms": h / n / 1e6,
                       "total_ms": (s + h) / n / 1e6}
                for name, (n, s, h) in self.calls.items() if n}
