"""The scale suite's sessions: a fleet of idle ones, grown and shrunk, and the figures
taken around it (start and round trip with n alive, memory, throughput)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.harness import machine
from bench.harness.baselines import LocalKernel
from bench.harness.cells import TRIVIAL, check_lib
from bench.harness.errors import BenchError
from bench.harness.interleave import alternating, interleave
from bench.harness.suite import Suite
from bench.suites.scale import MiB, Plan
from bench.suites.scale.hostmem import (
    cgroup_cpu_seconds,
    container_host_memory,
    cpu_ticks,
    docker_stats,
    proc_memory,
    self_memory,
)
from sandbox import AsyncSession, ManagerConfig, SandboxConfig, SessionManager, SessionStartError
from sandbox._runtime.base import LABEL_MANAGER, LABEL_OWNER_PID


class Scale(Suite):
    def __init__(self, plan: Plan, progress: Any) -> None:
        super().__init__(plan, progress)
        self.plan: Plan = plan
        self.t0 = time.perf_counter()
        self.open: set[Any] = set()  # every session started, until closed (cleanup)
        self.fleet: list[Any] = []  # idle sessions
        self.extra: dict[str, Any] = {"load": [], "bursts": [], "memory": {},
                                      "host_process": {}, "fleet_starts": [], "visits": [],
                                      "checks": {}}

    def load(self, phase: str) -> None:
        self.extra["load"].append({"phase": phase, "at_s": round(time.perf_counter() - self.t0, 1),
                                   "loadavg": machine.loadavg()})

    # -- sessions -----------------------------------------------------------------------------
    async def new_session(self, runtime: str = "runc") -> Any:
        session = AsyncSession(SandboxConfig(runtime=runtime))
        self.open.add(session)
        await session.start()
        return session

    async def close(self, session: Any) -> float:
        t0 = time.perf_counter()
        await session.close()
        self.open.discard(session)
        return time.perf_counter() - t0

    async def close_all(self) -> None:
        await asyncio.gather(*(s.close() for s in list(self.open)), return_exceptions=True)
        self.open.clear()
        self.fleet.clear()

    async def cold_start(self, runtime: str = "runc") -> Any:
        """A fresh session started, its first 1+1 checked and closed; the session (closed)
        for its ``phases``."""
        session = await self.new_session(runtime)
        try:
            check_lib(TRIVIAL, await session.execute(TRIVIAL))
        finally:
            await self.close(session)
        return session

    @staticmethod
    async def timed(session: Any, code: str = TRIVIAL, **kwargs: Any) -> tuple[float, Any]:
        t0 = time.perf_counter()
        result = await session.execute(code, **kwargs)
        return time.perf_counter() - t0, result

    async def rt(self, session: Any, code: str = TRIVIAL) -> float:
        elapsed, result = await self.timed(session, code)
        check_lib(code, result)
        return elapsed

    async def _fleet_member(self, gate: asyncio.Semaphore,
                            advance: Callable[[int], None] | None) -> Any:
        async with gate:
            for attempt in (1, 2):  # a loaded machine may miss the start deadline once
                try:
                    session = await self.new_session()
                    break
                except SessionStartError as exc:
                    failures = self.extra["checks"].setdefault("fleet_start_failures", [])
                    failures.append(str(exc))
                    if attempt == 2:
                        raise
            check_lib(TRIVIAL, await session.execute(TRIVIAL))
            if advance is not None:
                advance(1)
            return session

    async def grow(self, n: int, advance: Callable[[int], None] | None = None) -> None:
        """Start idle sessions (a few at once) until the fleet has *n*; each runs one 1+1."""
        need = n - len(self.fleet)
        if need <= 0:
            return
        gate = asyncio.Semaphore(self.plan.start_parallel)
        t0 = time.perf_counter()
        self.fleet += await asyncio.gather(*(self._fleet_member(gate, advance)
                                             for _ in range(need)))
        self.extra["fleet_starts"].append({"from": n - need, "to": n,
                                           "parallel": self.plan.start_parallel,
                                           "seconds": round(time.perf_counter() - t0, 2)})
        self.extra["host_process"][str(n)] = self_memory()

    async def shrink(self, n: int) -> None:
        doomed, self.fleet = self.fleet[n:], self.fleet[:n]
        await asyncio.gather(*(self.close(s) for s in doomed))

    # 1 + 3. growth, memory and throughput around one fleet ------------------------------------
    def define_live(self, levels: Sequence[int]) -> None:
        r = self.rec
        for level in levels:
            r.define(f"live.{level}.cold", "live", f"cold start, {level} idle sessions alive",
                     "session.phases['total']")
            r.define(f"live.{level}.rt", "live", f"1+1 round trip, {level} idle sessions alive",
                     "a warm session besides the idle ones")
        for level in levels[1:]:
            r.compare("live", f"cold start: {level} live / 0 live", f"live.{level}.cold",
                      "live.0.cold")
            r.compare("live", f"1+1: {level} live / 0 live", f"live.{level}.rt", "live.0.rt")

    async def bench_fleet(self) -> None:
        p = self.plan
        levels = sorted(p.live_levels)
        if p.memory_n not in levels or levels[0] != 0:
            raise BenchError(f"plan: memory_n {p.memory_n} must be one of live_levels {levels}, "
                             "which must start at 0")
        self.define_live(levels)
        self.define_throughput()
        top = max(max(levels), max(p.concurrency))
        self.extra["memory"]["available_mib_before"] = (machine.meminfo_kib("MemAvailable")
                                                        or 0) / 1024
        self.extra["host_process"]["0"] = self_memory()
        advance = self.task(f"idle sessions: up to {top}, and back", 2 * top)
        probe = await self.new_session()
        try:
            for _ in range(3):  # warm-up, unrecorded
                await self.rt(probe)
            await self.cold_start()
            for level in levels:
                await self.grow(level, advance)
                await self.visit(level, probe, "up")
                if level == p.memory_n:
                    await self.measure_fleet_memory()
            await self.grow(top, advance)
            await self.bench_throughput()
            for level in reversed(levels):
                before = len(self.fleet)
                await self.shrink(level)
                advance(before - level)
                await self.visit(level, probe, "down")
        finally:
            await self.close(probe)

    async def visit(self, level: int, probe: Any, direction: str) -> None:
        """Cold starts and blocks of 1+1 on *probe*, alternating, with *level* idle sessions."""
        self.load(f"{level} live ({direction})")
        p = self.plan
        per_block = max(1, p.live_rt // p.live_starts)

        async def cold() -> None:
            session = await self.cold_start()
            self.rec.add(f"live.{level}.cold", session.phases["total"])

        async def block() -> None:
            for _ in range(per_block):
                self.rec.add(f"live.{level}.rt", await self.rt(probe))

        names = ["cold", "block"] if direction == "up" else ["block", "cold"]
        await interleave({"cold": cold, "block": block}, p.live_starts, block=1,
                         orders=alternating(names))
        self.extra["visits"].append({"level": level, "direction": direction,
                                     "fleet": len(self.fleet), "loadavg": machine.loadavg()})

    # 2. memory ---------------------------------------------------------------------------------
    def define_memory(self) -> None:
        r, g = self.rec, "memory"
        n = self.plan.memory_n
        for prefix, what in (("idle", f"idle session (of {n})"), ("pool", "pooled kernel")):
            r.define(f"mem.{prefix}.host", g, f"{what}: host memory",
                     "cgroup usage + containerd-shim PSS", unit="MiB")
            r.define(f"mem.{prefix}.usage", g, f"{what}: cgroup usage",
                     "memory.usage_in_bytes: anon + page cache + tmpfs", unit="MiB")
            r.define(f"mem.{prefix}.anon", g, f"{what}: cgroup anon (rss)",
                     "init + kernel private memory", unit="MiB")
        r.define("mem.idle.shim", g, "idle session: containerd-shim PSS",
                 "the engine's per-container process on the host", unit="MiB")
        r.define("mem.idle.docker_stats", g, "idle session: `docker stats` MEM USAGE",
                 "cross-check: usage less page cache", unit="MiB")
        r.define("mem.local.rss", g, "host ipykernel: RSS", "after one 1+1", unit="MiB")
        r.define("mem.local.anon", g, "host ipykernel: anonymous RSS", "private memory",
                 unit="MiB")
        r.compare(g, "idle session host memory / host ipykernel RSS", "mem.idle.host",
                  "mem.local.rss")
        r.compare(g, "idle session anon / host ipykernel anon", "mem.idle.anon", "mem.local.anon")
        r.compare(g, "pooled kernel / idle session (host memory)", "mem.pool.host", "mem.idle.host")

    def container_memory(self, prefix: str, container_ids: Sequence[str]) -> None:
        """Read each container's cgroup and shim; add them to the ``mem.<prefix>.*`` series."""
        for cid in container_ids:
            cg, shim = container_host_memory(self.docker, cid)
            self.rec.add(f"mem.{prefix}.usage", cg["usage"] / MiB)
            self.rec.add(f"mem.{prefix}.anon", cg["anon"] / MiB)
            self.rec.add(f"mem.{prefix}.host", (cg["usage"] + shim) / MiB)
            if f"mem.{prefix}.shim" in self.rec.series:
                self.rec.add(f"mem.{prefix}.shim", shim / MiB)

    async def idle_cpu(self, ids: Sequence[str]) -> None:
        """While they are idle, how much CPU do they (and this process) use?"""
        before = [cgroup_cpu_seconds(i) for i in ids]
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(2.0)
        wall = time.perf_counter() - t0
        after = [cgroup_cpu_seconds(i) for i in ids]
        if None not in before and None not in after:
            used = sum((a or 0.0) - (b or 0.0) for a, b in zip(after, before, strict=True))
            self.extra["memory"]["idle_cpu"] = {
                "sessions": len(ids), "seconds": wall, "containers_cores": used / wall,
                "this_process_cores": (time.process_time() - cpu0) / wall}

    async def measure_fleet_memory(self) -> None:
        self.load("memory of idle sessions")
        sessions = self.fleet[: self.plan.memory_n]
        await asyncio.sleep(1.0)  # let the last started kernels settle
        ids = [s.container_id for s in sessions]
        await asyncio.to_thread(self.container_memory, "idle", ids)
        stats = await asyncio.to_thread(docker_stats, [i[:12] for i in ids])
        for value in stats.values():
            self.rec.add("mem.idle.docker_stats", value / MiB)
        await self.idle_cpu(ids)
        mem = self.extra["memory"]
        mem["available_mib_at_n"] = (machine.meminfo_kib("MemAvailable") or 0) / 1024
        mem["fleet_at_n"] = len(self.fleet)

    async def bench_pool_memory(self) -> None:
        """Kernels waiting in a SessionManager's warm pool: started, never used."""
        self.load("pool memory")
        n = self.plan.pool
        async with SessionManager(ManagerConfig(pool_size=n)) as m:
            end = time.monotonic() + 60 + 15 * n
            while m.pool_level < n:
                if time.monotonic() > end:
                    raise BenchError(f"the warm pool did not fill to {n}")
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
            found = self.docker.containers.list(filters={"label": [
                f"{LABEL_MANAGER}={m.instance_id}", f"{LABEL_OWNER_PID}={os.getpid()}"]})
            if len(found) != n:
                raise BenchError(f"{len(found)} pool containers found, not {n}")
            await asyncio.to_thread(self.container_memory, "pool", [c.id for c in found])

    async def bench_host_kernel_memory(self) -> None:
        """The baseline: ipykernels on the host, each after one 1+1."""
        self.load("host kernel memory")
        kernels = [LocalKernel() for _ in range(self.plan.host_kernels)]
        try:
            for k in kernels:
                await k.start()
                await k.execute(TRIVIAL)
            await asyncio.sleep(0.5)
            for k in kernels:
                m = proc_memory(k.pid)
                if "VmRSS" not in m:
                    raise BenchError("could not read the host kernel's memory from /proc")
                self.rec.add("mem.local.rss", m["VmRSS"] / MiB)
                self.rec.add("mem.local.anon", m["RssAnon"] / MiB)
        finally:
            for k in kernels:
                await k.shutdown()

    # 1. throughput -----------------------------------------------------------------------------
    def define_throughput(self) -> None:
        r, g = self.rec, "tput"
        for c in self.plan.concurrency:
            r.define(f"tput.{c}", g, f"{c} session(s): cells/s", "all sessions together, per burst",
                     unit="cells/s")
            r.define(f"tput.{c}.lat", g, f"{c} session(s): 1+1 latency", "each cell, call to result")
            r.define(f"tput.{c}.cpu", g, f"{c} session(s): this process's CPU per cell",
                     "process_time / cells, per burst")
        base = self.plan.concurrency[0]
        for c in self.plan.concurrency[1:]:
            r.compare(g, f"throughput: {c} / {base} session(s)", f"tput.{c}", f"tput.{base}")
            r.compare(g, f"latency: {c} / {base} session(s)", f"tput.{c}.lat", f"tput.{base}.lat")
            r.compare(g, f"host CPU per cell: {c} / {base} session(s)", f"tput.{c}.cpu",
                      f"tput.{base}.cpu")

    async def burst(self, sessions: Sequence[Any], seconds: float) -> dict[str, Any]:
        """Each session runs 1+1 in a loop until *seconds* have passed."""
        latencies: list[float] = []
        end = time.perf_counter() + seconds

        async def loop(session: Any) -> int:
            n = 0
            while time.perf_counter() < end:
                latencies.append(await self.rt(session))
                n += 1
            return n

        busy0, total0 = cpu_ticks()
        cpu0, t0 = time.process_time(), time.perf_counter()
        cells = sum(await asyncio.gather(*(loop(s) for s in sessions)))
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        busy1, total1 = cpu_ticks()
        return {"sessions": len(sessions), "cells": cells, "seconds": elapsed,
                "rate": cells / elapsed, "cpu_per_cell": cpu / max(cells, 1),
                "machine_busy": (busy1 - busy0) / max(total1 - total0, 1),
                "latencies": latencies}

    async def bench_throughput(self) -> None:
        p = self.plan
        self.load(f"throughput ({len(self.fleet)} sessions alive)")
        for s in self.fleet:  # every session warm
            await self.rt(s)
        await self.burst(self.fleet[: max(p.concurrency)], min(1.0, p.burst_s))  # warm-up
        advance = self.task("throughput: " + " · ".join(f"{c} sessions" for c in p.concurrency),
                            p.rounds * len(p.concurrency))
        for rnd in range(p.rounds):
            k = rnd % len(p.concurrency)
            order = list(p.concurrency[k:] + p.concurrency[:k])
            if rnd % 2:
                order.reverse()
            for c in order:
                b = await self.burst(self.fleet[:c], p.burst_s)
                self.rec.add(f"tput.{c}", b["rate"])
                self.rec.add(f"tput.{c}.cpu", b["cpu_per_cell"])
                self.rec.series[f"tput.{c}.lat"]["samples"] += b.pop("latencies")
                b["loadavg"] = machine.loadavg()
                self.extra["bursts"].append(b)
                advance(1)
