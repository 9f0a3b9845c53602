"""The core suite's run: cold starts, pool acquires and cells, each interleaved with its
baseline (the docker-run floor, a host ipykernel)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import ipykernel
import jupyter_client

from bench.harness import machine
from bench.harness.baselines import LocalKernel, docker_run_floor
from bench.harness.cells import (
    DATAFRAME,
    MATPLOTLIB,
    PRINT_HEAVY,
    TRIVIAL,
    VERSIONS_PROBE,
    check_lib,
    check_local,
    local_display_mimes,
    local_result_mimes,
    local_stdout,
)
from bench.harness.engine import agentbox_containers, check_image
from bench.harness.errors import BenchError
from bench.harness.interleave import alternating, interleave, rotation
from bench.harness.recorder import Clock, header
from bench.harness.run import progress_display
from bench.harness.suite import Suite, pool_turn
from bench.suites.core import CELL_GROUPS, TARGET_RATIO, Plan
from bench.suites.core.render import core_headlines
from sandbox import AsyncSession, ManagerConfig, SessionManager

CELLS = [  # key, code, label
    ("trivial", TRIVIAL, "1+1"),
    ("print", PRINT_HEAVY, "print 1000 lines"),
    ("dataframe", DATAFRAME, "10,000-row DataFrame display"),
    ("figure", MATPLOTLIB, "matplotlib figure (PNG)"),
]


class Bench(Suite):
    def __init__(self, plan: Plan, progress: Any) -> None:
        super().__init__(plan, progress)
        self.plan: Plan = plan
        self.extra: dict[str, Any] = {"versions": {}, "outputs": {}}

    # 1. cold start -----------------------------------------------------------------------
    async def cold_session(self) -> None:
        session = AsyncSession()
        try:
            t0 = time.perf_counter()
            await session.start()
            result = await session.execute(TRIVIAL)
            ttfr = time.perf_counter() - t0
            check_lib(TRIVIAL, result)
        finally:
            t1 = time.perf_counter()
            await session.close()
            close_s = time.perf_counter() - t1
        for phase in ("container_start", "kernel_ready", "total"):
            self.rec.add(f"lib.cold.{phase}", session.phases[phase])
        self.rec.add("lib.cold.ttfr", ttfr)
        self.rec.add("lib.cold.close", close_s)

    async def local_start(self) -> None:
        kernel = LocalKernel()
        try:
            ready = await kernel.start()
        finally:
            down = await kernel.shutdown()
        self.rec.add("local.start", ready)
        self.rec.add("local.shutdown", down)

    async def floor(self) -> float:
        return await docker_run_floor(self.docker, self.image)

    def define_cold(self) -> None:
        r, g = self.rec, "cold"
        r.define("lib.cold.total", g, "cold start: total", "session.phases['total']")
        r.define("lib.cold.container_start", g, "cold start: container_start",
                 "create + start of the hardened container")
        r.define("lib.cold.kernel_ready", g, "cold start: kernel_ready",
                 "container running → kernel answers")
        r.define("lib.cold.ttfr", g, "cold start + first 1+1", "time to first result")
        r.define("lib.cold.close", g, "close()", "container removed, run dir deleted")
        r.define("floor.docker_run", g, "docker run --rm --network none IMAGE true",
                 "engine floor: create, start, wait, remove")
        r.define("local.start", g, "host ipykernel start → ready",
                 "jupyter_client start_kernel + wait_for_ready")
        r.define("local.shutdown", g, "host ipykernel shutdown (now=True)")
        r.compare(g, "cold start total / docker-run floor", "lib.cold.total", "floor.docker_run")
        r.compare(g, "container_start / docker-run floor", "lib.cold.container_start",
                  "floor.docker_run")
        r.compare(g, "cold start total / host kernel start", "lib.cold.total", "local.start")
        r.compare(g, "kernel_ready / host kernel start", "lib.cold.kernel_ready", "local.start")
        r.compare(g, "close / host kernel shutdown", "lib.cold.close", "local.shutdown")

    async def bench_cold(self) -> None:
        self.define_cold()
        # Warm-up: one of each, unrecorded (page cache, image layers, imports).
        await self.floor()
        await self.cold_session()
        await self.local_start()
        self.rec.clear()
        steps: dict[str, Callable[[], Awaitable[Any]]] = {
            "floor.docker_run": self.floor, "lib": self.cold_session, "local": self.local_start}
        advance = self.task("cold start  (docker run · session · host kernel)",
                             3 * self.plan.cold)
        # Rotate so no side always follows another.
        await interleave(steps, self.plan.cold, block=1, record=self.rec.add, advance=advance,
                         orders=rotation(["floor.docker_run", "lib", "local"]))

    # 2. pool acquire ---------------------------------------------------------------------
    def define_pool(self) -> None:
        r, g = self.rec, "pool"
        r.define("lib.pool.acquire", g, "pool acquire: await m.create()",
                 "full pool (level 2) before each take")
        r.define("lib.pool.ttfr", g, "pool acquire + first 1+1", "time to first result")
        r.define("lib.pool.refill", g, "pool refill after close (context)",
                 "close → pool back at 2; a cold start in the background")
        r.compare(g, "pool acquire / cold start total", "lib.pool.acquire", "lib.cold.total")
        r.compare(g, "pool time to first result / cold", "lib.pool.ttfr", "lib.cold.ttfr")

    async def bench_pool(self) -> None:
        self.define_pool()
        misses = 0
        advance = self.task("pool acquire (size 2)", self.plan.pool)
        async with SessionManager(ManagerConfig(pool_size=2)) as m:
            await wait_pool(m, 2)
            for _ in range(self.plan.pool):
                turn = await pool_turn(m)
                if not turn.from_pool:
                    misses += 1  # started cold: not a pool figure
                else:
                    self.rec.add("lib.pool.acquire", turn.acquired_s)
                    self.rec.add("lib.pool.ttfr", turn.ttfr_s)
                await wait_pool(m, 2)
                self.rec.add("lib.pool.refill", time.perf_counter() - turn.closing_at)
                advance(1)
        self.extra["pool_misses"] = misses

    # 3 + 4. cells ---------------------------------------------------------------------------
    def define_cells(self) -> None:
        for key, _code, label in CELLS:
            g = "trivial" if key == "trivial" else "heavy"
            self.rec.define(f"lib.rt.{key}", g, f"{label}: sandbox", "await session.execute(...)")
            self.rec.define(f"local.rt.{key}", g, f"{label}: host kernel",
                            "jupyter_client execute_interactive, reply + idle")
            self.rec.compare(g, f"{label}: sandbox / host kernel", f"lib.rt.{key}",
                             f"local.rt.{key}")

    async def bench_cells(self) -> None:
        self.define_cells()
        p = self.plan
        local = LocalKernel()
        async with AsyncSession() as session:
            try:
                await local.start()
                self.extra["versions"]["sandbox_kernel"] = await lib_versions(session)
                self.extra["versions"]["host_kernel"] = await local_versions(local)
                for key, code, label in CELLS:
                    n, warmup = ((p.trivial, p.warmup_trivial) if key == "trivial"
                                 else (p.heavy, p.warmup_heavy))
                    for _ in range(warmup):
                        await lib_cell(session, code)
                        await local_cell(local, code)
                    sides = {f"lib.rt.{key}": lambda c=code: lib_cell(session, c),
                             f"local.rt.{key}": lambda c=code: local_cell(local, c)}
                    await interleave(sides, n, block=p.block, orders=alternating(list(sides)),
                                     record=self.rec.add,
                                     advance=self.task(f"{label} (sandbox vs host kernel)", 2 * n))
                    self.extra["outputs"][key] = await describe_outputs(session, local, code)
            finally:
                await local.shutdown()


async def wait_pool(m: Any, level: int, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while m.pool_level < level:
        if time.monotonic() > end:
            raise BenchError(f"the warm pool did not refill to {level} in {timeout:.0f}s "
                             f"(level {m.pool_level}, last error: {m._pool.last_error})")
        await asyncio.sleep(0.01)


async def lib_cell(session: Any, code: str) -> float:
    t0 = time.perf_counter()
    result = await session.execute(code, timeout=60)
    elapsed = time.perf_counter() - t0
    check_lib(code, result)
    return elapsed


async def local_cell(local: LocalKernel, code: str) -> float:
    elapsed, reply, msgs = await local.execute(code)
    check_local(code, reply, msgs)
    return elapsed


async def lib_versions(session: Any) -> dict[str, str]:
    result = await session.execute(VERSIONS_PROBE, timeout=60)
    versions: dict[str, str] = (json.loads(result.stdout) if result.status == "ok"
                                else {"error": result.status})
    return versions


async def local_versions(local: LocalKernel) -> dict[str, str]:
    _, reply, msgs = await local.execute(VERSIONS_PROBE)
    if reply.get("content", {}).get("status") != "ok":
        return {"error": "probe failed"}
    versions: dict[str, str] = json.loads(local_stdout(msgs))
    return versions


async def describe_outputs(session: Any, local: LocalKernel, code: str) -> dict[str, Any]:
    """What each side produced for *code*, so that unequal work is visible."""
    result = await session.execute(code, timeout=60)
    _, _reply, msgs = await local.execute(code)
    lib_out = result.result
    return {
        "sandbox": {"result_mimes": sorted(lib_out.data) if lib_out else [],
                    "display_mimes": sorted({m for d in result.displays for m in d.data
                                             if d.type == "display_data"}),
                    "stdout_bytes": len(result.stdout.encode()),
                    "outputs": len(result.outputs)},
        "host": {"result_mimes": local_result_mimes(msgs),
                 "display_mimes": local_display_mimes(msgs),
                 "stdout_bytes": len(local_stdout(msgs).encode()),
                 "iopub_messages": len(msgs)},
    }


def mark_targets(comparisons: list[dict[str, Any]]) -> None:
    """The issue's target for cells: the sandbox under 5% over the host kernel at p50."""
    for c in comparisons:
        if c["group"] in CELL_GROUPS and "ratio" in c:
            c["target_ratio"] = TARGET_RATIO
            c["target_met"] = c["ratio"] < TARGET_RATIO


async def run(plan: Plan, console: Any) -> dict[str, Any]:
    clock = Clock()
    with progress_display(console) as progress:
        bench = Bench(plan, progress)
        check_image(bench.docker, bench.image)
        info = machine.machine_info(bench.docker, bench.image)
        await bench.bench_cold()
        await bench.bench_pool()
        await bench.bench_cells()
    bench.rec.finish()
    mark_targets(bench.rec.comparisons)
    info["loadavg_at_end"] = machine.loadavg()
    data = header("core", plan, clock, git=machine.git_state(), machine=info)
    data.update({
        "libraries": {"jupyter_client": jupyter_client.__version__,  # type: ignore[attr-defined]
                      "ipykernel": ipykernel.__version__},  # type: ignore[attr-defined]
        "versions": bench.extra["versions"],
        "outputs": bench.extra["outputs"],
        "checks": {"pool_misses": bench.extra.get("pool_misses", 0),
                   "leaked_containers": agentbox_containers(bench.docker, mine=True)},
        "series": bench.rec.series,
        "comparisons": bench.rec.comparisons,
    })
    data["headlines"] = core_headlines(data)
    return data
