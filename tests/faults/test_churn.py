"""1,000 create/execute/close cycles leave no container, network, volume, directory,
file descriptor or thread behind (counted before and after).

What is counted, and why exactly so:

- containers: every container (all states) labelled ``org.agentbox.app=agentbox`` and
  owned by this process (``org.agentbox.owner-pid``): each of them could only be a leak
  of this test run, while sessions of *other* processes on this machine come and go;
- networks and volumes: all of the engine's (a sandbox has ``network=none`` and its
  removal passes ``v=True``; a new one would be a leak of ours);
- entries in the run root (``AGENTBOX_RUN_ROOT``: this test run's own);
- this process's open file descriptors (``/proc/self/fd``) and OS threads
  (``/proc/self/task``, which also sees ZMQ's I/O threads).

The cycles run in event loops of their own (``asyncio.run``), so the loop's worker
threads and its own descriptors are gone when counting. The one thing that outlives a
loop on purpose is the process-wide Docker client with its connection pool, filled
lazily up to 10 connections depending on how many engine calls overlapped: it is
closed before each count (it reconnects on the next call), so the counts are exact.
A short warm-up before the first count makes whatever is created once per process
(imports, the image tag, logging) part of the baseline.

Every cycle runs to its end, failed or not (none is cancelled because another one
failed; what a cancelled start leaves is test_cancelled_start.py's subject). A start
may fail on a machine loaded by other work; a cycle whose start failed must leave
nothing behind like any other. Failed starts are counted and printed, and more than
FAILED_STARTS_MAX of them fail the test, as does any failure after a start. (Two
failures were seen here once, about 1 start in 200 to 1,000, and fixed: a kernel slowed
down by the load answered each kernel_info after the host had given up on it and sent
the next, so the host never took an answer; and "the kernel exited while starting"
came up as a bare SandboxError rather than a SessionStartError.)
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandbox import AsyncSession, SandboxError
from sandbox._runtime.base import LABEL_APP, LABEL_OWNER_PID
from sandbox._runtime.dockerd import default_runtime

pytestmark = pytest.mark.usefixtures("engine")

CYCLES = 1_000
# Starts are CPU-bound (the kernel's imports), so on this 2-core machine 2 at a time is
# the fastest: 2.7 cycles/s on a quiet machine, against 2.4 with 4 and 2.3 with 6 at a
# time, which only add contention (and contention is what trips the known failure).
CONCURRENCY = 2
WARM_UP = 2 * CONCURRENCY
FAILED_STARTS_MAX = 10  # 1% of the cycles; see the module docstring


@dataclass(frozen=True)
class Census:
    containers: tuple[str, ...]
    networks: tuple[str, ...]
    volumes: tuple[str, ...]
    run_dirs: tuple[str, ...]
    fds: tuple[str, ...]  # what each descriptor is (path, socket:[inode], pipe:[...])
    threads: int
    py_threads: int


def open_fds() -> tuple[str, ...]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:  # the descriptor listdir itself used
            continue
    return tuple(sorted(found))


def kinds(fds: tuple[str, ...]) -> Counter[str]:
    return Counter(f.split(":[")[0] if ":[" in f else f for f in fds)


def census(engine: Any) -> Census:
    asyncio.run(default_runtime().close())  # its pool is a cache, not a leak: see above
    gc.collect()
    run_root = Path(os.environ["AGENTBOX_RUN_ROOT"])
    labels = [f"{LABEL_APP}=agentbox", f"{LABEL_OWNER_PID}={os.getpid()}"]
    return Census(
        containers=tuple(sorted(c.name for c in engine.containers.list(
            all=True, filters={"label": labels}))),
        networks=tuple(sorted(n.id for n in engine.networks.list())),
        volumes=tuple(sorted(v.name for v in engine.volumes.list())),
        run_dirs=tuple(sorted(os.listdir(run_root))) if run_root.exists() else (),
        fds=open_fds(),
        threads=len(os.listdir("/proc/self/task")),
        py_threads=threading.active_count(),
    )


@dataclass(frozen=True)
class FailedStart:
    error: SandboxError


async def cycles(n: int, concurrency: int) -> list[float | FailedStart | BaseException]:
    """*n* create/execute/close cycles, *concurrency* at a time: each one's duration, or
    its failed start, or what else it raised."""
    gate = asyncio.Semaphore(concurrency)

    async def cycle() -> float | FailedStart:
        async with gate:
            t0 = time.monotonic()
            session = AsyncSession()
            try:
                await session.start()  # what `async with` does first; closes itself on failure
            except SandboxError as exc:
                return FailedStart(exc)
            async with session as s:
                assert (await s.execute("1+1")).text == "2"
            return time.monotonic() - t0

    return await asyncio.gather(*(cycle() for _ in range(n)), return_exceptions=True)


@pytest.mark.timeout(1800)
def test_a_thousand_cycles_leave_nothing_behind(engine: Any,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    warm = asyncio.run(cycles(WARM_UP, CONCURRENCY))
    assert all(isinstance(o, float | FailedStart) for o in warm), warm
    before = census(engine)
    t0 = time.monotonic()
    outcomes = asyncio.run(cycles(CYCLES, CONCURRENCY))
    elapsed = time.monotonic() - t0
    after = census(engine)

    durations = [o for o in outcomes if isinstance(o, float)]
    failed_starts = [o.error for o in outcomes if isinstance(o, FailedStart)]
    quantiles = statistics.quantiles(durations, n=100)
    with capsys.disabled():
        print(f"\nchurn: {CYCLES} create/execute/close cycles, {CONCURRENCY} at a time, in "
              f"{elapsed:.0f}s = {CYCLES / elapsed:.2f} cycles/s (cycle p50 "
              f"{quantiles[49]:.2f}s, p95 {quantiles[94]:.2f}s, max {max(durations):.2f}s); "
              f"failed starts {len(failed_starts)}; fds {len(before.fds)}->"
              f"{len(after.fds)}, threads {before.threads}->{after.threads}")
        for error in failed_starts:
            print(f"  failed start: {type(error).__name__}: {error}")
    unexpected = [o for o in outcomes if not isinstance(o, float | FailedStart)]
    assert not unexpected, unexpected[:5]  # a started session must run its cell and close
    assert len(failed_starts) <= FAILED_STARTS_MAX, failed_starts
    assert len(durations) + len(failed_starts) == CYCLES
    assert after.containers == before.containers
    assert after.networks == before.networks
    assert after.volumes == before.volumes
    assert after.run_dirs == before.run_dirs
    assert len(after.fds) == len(before.fds), (kinds(after.fds) - kinds(before.fds),
                                               kinds(before.fds) - kinds(after.fds))
    assert after.threads == before.threads
    assert after.py_threads == before.py_threads, [t.name for t in threading.enumerate()]
