"""The scale suite's run: host kernels, the fleet, the pool, failure paths, isolation."""

from __future__ import annotations

from typing import Any

from bench.harness import machine
from bench.harness.engine import agentbox_containers, check_image
from bench.harness.recorder import Clock, header
from bench.harness.run import progress_display
from bench.suites.scale import Plan
from bench.suites.scale.derive import capacity, scale_headlines, thin_latencies
from bench.suites.scale.failures import bench_failures
from bench.suites.scale.fleet import Scale
from bench.suites.scale.isolation import bench_isolation
from sandbox import SandboxConfig


async def measure_all(bench: Scale) -> None:
    try:
        bench.load("start")
        bench.define_memory()
        await bench.bench_host_kernel_memory()
        await bench.bench_fleet()
        await bench.bench_pool_memory()
        await bench_failures(bench)
        await bench_isolation(bench)
        bench.load("end")
    finally:
        await bench.close_all()


async def run(plan: Plan, console: Any) -> dict[str, Any]:
    clock = Clock()
    with progress_display(console) as progress:
        bench = Scale(plan, progress)
        check_image(bench.docker, bench.image)
        info = machine.machine_info(bench.docker, bench.image)
        await measure_all(bench)
    latency_counts = thin_latencies(bench.rec)
    bench.rec.finish()
    info["loadavg_at_end"] = machine.loadavg()
    checks = {**bench.extra["checks"], "latencies_recorded": latency_counts,
              "leaked_containers": agentbox_containers(bench.docker, mine=True)}
    data = header("scale", plan, clock, git=machine.git_state(), machine=info)
    data.update({
        "session_memory_limit_mb": SandboxConfig().memory_mb,
        **{key: bench.extra[key] for key in ("load", "visits", "bursts", "fleet_starts",
                                             "host_process", "memory")},
        "checks": checks,
        "series": bench.rec.series,
        "comparisons": bench.rec.comparisons,
    })
    data["capacity"] = capacity(data)
    data["headlines"] = scale_headlines(data)
    return data
