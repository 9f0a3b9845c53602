"""Core library: each figure beside a baseline measured in the same run.

1. Cold session start: ``AsyncSession().start()`` and its phases (``container_start``,
   ``kernel_ready``, ``total``), the first ``1+1`` and ``close()``. Baselines: the
   engine's bare ``docker run --rm --network none IMAGE true`` and an ipykernel started
   on the host by jupyter_client.
2. Pool acquire: ``SessionManager.create()`` served from a full warm pool, against the
   cold start of (1).
3. A trivial cell (``1+1``) round trip on a warm session, against the same cell on the
   host kernel.
4. A print-heavy cell, a 10,000-row DataFrame display and a matplotlib figure (inline
   PNG), both ways. Target from the issue: the container adds under 5% (ratio < 1.05 at
   p50) to every cell.

The report (docs/benchmarks.md) is the front page of the benchmarks: it opens with an
index of all the reports, read from the other suites' results.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.suites import Suite

TARGET_RATIO = 1.05  # from the issue: the container adds under 5% over the host kernel
CELL_GROUPS = ("trivial", "heavy")


@dataclass(frozen=True)
class Plan:
    mode: str
    cold: int  # iterations of (docker-run floor, cold session, host kernel start)
    pool: int  # pool acquisitions
    trivial: int  # 1+1 round trips, each side
    heavy: int  # print-heavy and DataFrame cells, each side
    warmup_trivial: int = 5
    warmup_heavy: int = 2
    block: int = 10  # round trips alternate in blocks: block sandbox runs, block host runs, ...


PLANS = {
    "quick": Plan("quick", cold=5, pool=8, trivial=30, heavy=5, block=5),
    "full": Plan("full", cold=30, pool=40, trivial=200, heavy=20, block=10),
}

SUITE = Suite(
    name="core", title="agentbox core benchmark", heading="Core library",
    report="benchmarks.md", plot="bench-core.png", plans=PLANS,
    measures="cold start and its phases, pool acquire, cell round trips (`1+1`, 1,000-line "
             "print, 10,000-row DataFrame, matplotlib figure) against `docker run IMAGE true` "
             "and a host ipykernel")
