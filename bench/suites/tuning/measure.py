"""The tuning suite's run: the profile, then both transports in interleaved rounds."""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

from bench.harness import machine
from bench.harness.cells import TRIVIAL, check_lib
from bench.harness.engine import agentbox_containers
from bench.harness.errors import BenchError
from bench.harness.interleave import alternating, interleave
from bench.harness.recorder import Clock, header
from bench.harness.stats import ratio_ci
from bench.suites.tuning import Plan
from bench.suites.tuning.libzmq import LibzmqConnection, transport
from bench.suites.tuning.profile import measure, report
from sandbox import AsyncSession
from sandbox._runtime.dockerd import connect

Samples = dict[str, dict[str, list[float]]]


async def rounds(plan: Plan, sessions: dict[str, Any]) -> Samples:
    """Wall and CPU (this process, all threads) per cell, one block per side per round."""
    samples: Samples = {name: {"wall": [], "cpu": []} for name in sessions}

    def side(name: str) -> Any:
        async def block() -> None:
            wall0, cpu0 = time.perf_counter(), time.process_time()
            for _ in range(plan.block):
                check_lib(TRIVIAL, await sessions[name].execute(TRIVIAL))
            samples[name]["wall"].append((time.perf_counter() - wall0) / plan.block)
            samples[name]["cpu"].append((time.process_time() - cpu0) / plan.block)
        return block

    await interleave({name: side(name) for name in sessions}, plan.rounds, block=1,
                     orders=alternating(list(sessions)))
    return samples


async def before_after(plan: Plan) -> tuple[Samples, dict[str, str]]:
    """Wall and CPU per cell, per block, for both transports; and the connection class
    each session really used."""
    before, after = AsyncSession(), AsyncSession()
    try:
        with transport(LibzmqConnection):
            await before.start()  # its kernel connection is made now, through libzmq
        await after.start()
        sessions = {"before": before, "after": after}
        used = {name: type(s._kernel).__name__ for name, s in sessions.items()}
        if used != {"before": "LibzmqConnection", "after": "KernelConnection"}:
            raise BenchError(f"the sessions did not get the transports compared: {used}")
        for session in sessions.values():
            for _ in range(50):
                check_lib(TRIVIAL, await session.execute(TRIVIAL))
        samples = await rounds(plan, sessions)
    finally:
        await before.close()
        await after.close()
    return samples, used


def compare(samples: Samples) -> dict[str, dict[str, Any]]:
    comparisons = {}
    for kind in ("wall", "cpu"):
        b, a = samples["before"][kind], samples["after"][kind]
        comparisons[kind] = {"before_ms": statistics.median(b) * 1e3,
                             "after_ms": statistics.median(a) * 1e3,
                             "ratio": statistics.median(a) / statistics.median(b),
                             "ratio_ci95": list(ratio_ci(a, b))}
    return comparisons


def headlines(comparisons: dict[str, dict[str, Any]]) -> list[str]:
    cpu, wall = comparisons["cpu"], comparisons["wall"]
    return [f"host CPU per `1+1` {cpu['before_ms']:.2f} → {cpu['after_ms']:.2f} ms "
            f"({cpu['ratio']:.2f}× before) with the capped ZMTP reader in place of "
            "libzmq's recv",
            f"round trip per `1+1` {wall['before_ms']:.2f} → {wall['after_ms']:.2f} ms "
            f"({wall['ratio']:.2f}× before)"]


async def run(plan: Plan, console: Any) -> dict[str, Any]:
    client = connect()
    clock = Clock()
    load0 = machine.loadavg()
    try:
        console.print(f"profiling {plan.cells} cells of `1+1`...")
        plain, stats = await measure(plan.cells)
        profile = report(plain, stats, plan.cells, plan.top)
        console.print(f"before/after: {plan.rounds} rounds of {plan.block} cells each side...")
        samples, transports = await before_after(plan)
        leaks = agentbox_containers(client, mine=True)
    finally:
        client.close()
    comparisons = compare(samples)
    data = header("tuning", plan, clock, date=clock.date, git=machine.git_state(),
                  machine={"loadavg_at_start": load0, "loadavg_at_end": machine.loadavg(),
                           "cpu_count": os.cpu_count()})
    data.update({"plain": plain, "profile": profile, "samples": samples,
                 "comparisons": comparisons, "headlines": headlines(comparisons),
                 "checks": {"leaked_containers": leaks, "transports": transports}})
    return data
