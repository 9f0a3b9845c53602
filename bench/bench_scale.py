"""Benchmark of scale, failure paths and isolation, each figure beside a baseline of the same run.

    .venv/bin/python bench/bench_scale.py [--quick] [--out bench/results/scale.json]

As in ``bench_core`` and ``bench_api`` (whose statistics, reporting and command
line this reuses), the machines that run this are shared and noisy: subject and
baseline are interleaved, the figures that matter are the ratios, and the load
average is recorded at every phase.

What is measured (p50/p95/p99, min/max and stdev; raw samples kept):

1. Throughput: aggregate ``1+1`` cells per second with 1, 4, 16 and 64 sessions
   each running ``1+1`` in a loop for a fixed time (bursts of every level in
   rotating order, round after round). Baseline: the 1-session rate. Beside it the
   cell latency, the CPU this process spends per cell and how busy the machine was.
2. Memory: per idle session (the container's memory cgroup, plus its
   containerd-shim) at 16 idle sessions, per pooled kernel, and a host ipykernel's
   RSS as the baseline; from it, the most idle sessions this machine holds
   (formula in the report). The sessions are not started until memory runs out.
3. Growth: cold start and ``1+1`` round trip with 0, 8, 16 and 32 idle sessions
   alive, visited going up and again coming down (so a drift of the machine's load
   cancels out). Baseline: the value at 0.
4. Failure paths: a cell over its ``timeout=1`` ended by SIGINT, and one ignoring
   SIGINT (kernel restarted), each to a usable kernel again (total - 1 s, then the
   next ``1+1``), against a cell that ends by itself after 1 s; ``os._exit`` in a
   cell to the ``died`` result; ``docker kill`` from outside to ``session.state``
   ``dead``; the next ``1+1`` after each, against a cold start.
5. Isolation: cold start, ``1+1`` and a DataFrame display under gVisor (``runsc``)
   against ``runc``, interleaved; memory of each idle container.

Writes JSON to ``--out`` and a Markdown report with plots to ``--report``
(docs/benchmarks-scale.md); ``--render-only FILE`` rebuilds the report only.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import os
import random
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import (
    DATAFRAME,
    REPO,
    TRIVIAL,
    BenchError,
    LocalKernel,
    Recorder,
    _load,
    _meminfo_kib,
    agentbox_containers,
    check_image,
    check_lib,
    cli,
    contention_note,
    fmt_ms,
    fmt_ratio,
    fmt_value,
    git_state,
    machine_info,
    percentile,
    progress_display,
    save_figure,
    series_table,
    write_markdown,
)

DEFAULT_OUT = REPO / "bench" / "results" / "scale.json"
DEFAULT_REPORT = REPO / "docs" / "benchmarks-scale.md"
PLOT_NAME = "bench-scale.png"
SCHEMA = 1
MiB = 1024 * 1024
CGROUP = Path("/sys/fs/cgroup")
RESERVE_FRACTION = 0.10  # of the machine's memory, kept for the host, engine and page cache
LATENCY_KEEP = 2000  # per-cell latencies kept per level (a uniform sample), of thousands

SLEEP_1 = "import time; time.sleep(1)"
SLEEP_LONG = "import time; time.sleep(60)"
IGNORE_SIGINT = ("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                 "while True:\n    time.sleep(0.05)")
EXIT = "import os; os._exit(1)"
LIMIT_S = 1.0  # the timeout of the failure-path cells


@dataclass(frozen=True)
class Plan:
    mode: str
    live_levels: tuple[int, ...]  # idle sessions alive while start and round trip are timed
    live_starts: int  # cold starts per visit of a level
    live_rt: int  # 1+1 round trips per visit
    concurrency: tuple[int, ...]  # sessions running 1+1 in a loop at once
    burst_s: float  # length of one throughput burst
    rounds: int  # bursts per concurrency level
    memory_n: int  # idle sessions whose memory is read (one of live_levels)
    pool: int  # pooled kernels whose memory is read
    host_kernels: int  # host ipykernels whose memory is read (the baseline)
    interrupt: int  # timeout -> interrupt, and cells ending by themselves
    restart: int  # timeout -> restart (SIGINT ignored)
    died: int  # os._exit in a cell
    killed: int  # docker kill from outside
    iso_cold: int  # cold starts per runtime
    iso_rt: int  # 1+1 per runtime
    iso_df: int  # DataFrame displays per runtime
    iso_warmup: bool = True  # one unrecorded cold start of each runtime first
    start_parallel: int = 4  # fleet sessions started at once
    block: int = 10


PLANS = {
    # Quick: every figure, few samples, smaller levels (8 sessions instead of 16-64).
    "quick": Plan("quick", live_levels=(0, 8), live_starts=1, live_rt=10,
                  concurrency=(1, 4, 8), burst_s=1.0, rounds=2, memory_n=8, pool=1,
                  host_kernels=1, interrupt=1, restart=1, died=1, killed=1, iso_cold=1,
                  iso_rt=20, iso_df=4, iso_warmup=False, block=5),
    "full": Plan("full", live_levels=(0, 8, 16, 32), live_starts=3, live_rt=60,
                 concurrency=(1, 4, 16, 64), burst_s=3.0, rounds=3, memory_n=16, pool=4,
                 host_kernels=4, interrupt=5, restart=3, died=5, killed=5, iso_cold=6,
                 iso_rt=150, iso_df=20),
}


# -- reading memory -------------------------------------------------------------------------
def _kv(path: Path) -> dict[str, int]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value)
    return out


def cgroup_memory(container_id: str) -> dict[str, int] | None:
    """Bytes charged to the container's memory cgroup: ``usage`` (what the limit counts:
    anonymous memory, page cache, tmpfs), ``anon`` (its processes' private memory) and
    ``cache``. cgroup v1 (``memory/docker/<id>``, this host) or v2; None when not found."""
    v1 = CGROUP / "memory" / "docker" / container_id
    if (v1 / "memory.usage_in_bytes").exists():
        stat = _kv(v1 / "memory.stat")
        return {"usage": int((v1 / "memory.usage_in_bytes").read_text()),
                "anon": stat.get("total_rss", stat.get("rss", 0)),
                "cache": stat.get("total_cache", stat.get("cache", 0))}
    for v2 in (CGROUP / "system.slice" / f"docker-{container_id}.scope",
               CGROUP / "docker" / container_id):
        if (v2 / "memory.current").exists():
            stat = _kv(v2 / "memory.stat")
            return {"usage": int((v2 / "memory.current").read_text()),
                    "anon": stat.get("anon", 0), "cache": stat.get("file", 0)}
    return None


def proc_memory(pid: int) -> dict[str, int]:
    """RSS, private anonymous RSS and PSS (shared pages split between their users), bytes."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "Threads"):
                value = int(rest.split()[0])
                out[key] = value if key == "Threads" else value * 1024
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                out["Pss"] = int(line.split()[1]) * 1024
    return out


def parent_pid(pid: int) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return None


_UNITS = {"B": 1, "KiB": 1024, "MiB": MiB, "GiB": 1024 * MiB, "kB": 1e3, "MB": 1e6, "GB": 1e9}


def docker_stats(ids: Sequence[str]) -> dict[str, float]:
    """``docker stats --no-stream`` memory use (bytes) by short id: the CLI's own figure
    (the cgroup's usage less its page cache), as a cross-check of the cgroup reading."""
    if not ids:
        return {}
    done = subprocess.run(["docker", "stats", "--no-stream", "--format",
                           "{{.ID}} {{.MemUsage}}", *ids], capture_output=True, text=True,
                          timeout=60, check=False)
    out = {}
    for line in done.stdout.splitlines():
        short, _, usage = line.partition(" ")
        amount = usage.split("/")[0].strip()
        for unit in sorted(_UNITS, key=len, reverse=True):
            if amount.endswith(unit):
                with contextlib.suppress(ValueError):
                    out[short[:12]] = float(amount[: -len(unit)]) * _UNITS[unit]
                break
    return out


def cgroup_cpu_seconds(container_id: str) -> float | None:
    """CPU time the container's processes have used so far (cgroup v1 cpuacct, or v2)."""
    v1 = CGROUP / "cpuacct" / "docker" / container_id / "cpuacct.usage"
    if v1.exists():
        return int(v1.read_text()) / 1e9
    for v2 in (CGROUP / "system.slice" / f"docker-{container_id}.scope", CGROUP / "docker" / container_id):
        if (v2 / "cpu.stat").exists():
            return _kv(v2 / "cpu.stat").get("usage_usec", 0) / 1e6
    return None


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def self_memory() -> dict[str, float]:
    m = proc_memory(os.getpid())
    return {"rss_mib": m.get("VmRSS", 0) / MiB, "threads": m.get("Threads", 0)}


# -- the benchmark ----------------------------------------------------------------------------
class Scale:
    def __init__(self, plan: Plan, progress: Any) -> None:
        import docker

        import sandbox

        self.plan = plan
        self.progress = progress
        self.rec = Recorder()
        self.docker = docker.from_env()
        self.image = sandbox.image_tag()
        self.t0 = time.perf_counter()
        self.open: set[Any] = set()  # every session started, until closed (cleanup)
        self.fleet: list[Any] = []  # idle sessions
        self.extra: dict[str, Any] = {"load": [], "bursts": [], "memory": {},
                                      "host_process": {}, "fleet_starts": [], "visits": [],
                                      "checks": {}}

    def _task(self, description: str, total: int) -> Any:
        return self.progress.add_task(description, total=total)

    def load(self, phase: str) -> None:
        self.extra["load"].append({"phase": phase, "at_s": round(time.perf_counter() - self.t0, 1),
                                   "loadavg": list(os.getloadavg())})

    # -- sessions -----------------------------------------------------------------------------
    async def new_session(self, runtime: str = "runc") -> Any:
        from sandbox import AsyncSession, SandboxConfig

        session = AsyncSession(SandboxConfig(runtime=runtime))  # type: ignore[arg-type]
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

    async def grow(self, n: int, task: Any = None) -> None:
        """Start idle sessions (a few at once) until the fleet has *n*; each runs one 1+1."""
        need = n - len(self.fleet)
        if need <= 0:
            return
        gate = asyncio.Semaphore(self.plan.start_parallel)

        async def one() -> Any:
            from sandbox import SessionStartError

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
                if task is not None:
                    self.progress.advance(task)
                return session

        t0 = time.perf_counter()
        self.fleet += await asyncio.gather(*(one() for _ in range(need)))
        self.extra["fleet_starts"].append({"from": n - need, "to": n,
                                           "parallel": self.plan.start_parallel,
                                           "seconds": round(time.perf_counter() - t0, 2)})
        self.extra["host_process"][str(n)] = self_memory()

    async def shrink(self, n: int) -> None:
        doomed, self.fleet = self.fleet[n:], self.fleet[:n]
        await asyncio.gather(*(self.close(s) for s in doomed))

    # 1 + 3. growth, memory and throughput around one fleet ------------------------------------
    async def bench_fleet(self) -> None:
        r, p = self.rec, self.plan
        levels = sorted(p.live_levels)
        if p.memory_n not in levels or levels[0] != 0:
            raise BenchError(f"plan: memory_n {p.memory_n} must be one of live_levels {levels}, "
                             "which must start at 0")
        for level in levels:
            r.define(f"live.{level}.cold", "live", f"cold start, {level} idle sessions alive",
                     "session.phases['total']")
            r.define(f"live.{level}.rt", "live", f"1+1 round trip, {level} idle sessions alive",
                     "a warm session besides the idle ones")
        for level in levels[1:]:
            r.compare("live", f"cold start: {level} live / 0 live", f"live.{level}.cold",
                      "live.0.cold")
            r.compare("live", f"1+1: {level} live / 0 live", f"live.{level}.rt", "live.0.rt")
        self.define_throughput()

        top = max(max(levels), max(p.concurrency))
        self.extra["memory"]["available_mib_before"] = (_meminfo_kib("MemAvailable") or 0) / 1024
        self.extra["host_process"]["0"] = self_memory()
        task = self._task(f"idle sessions: up to {top}, and back", 2 * top)
        probe = await self.new_session()
        try:
            for _ in range(3):  # warm-up, unrecorded
                await self.rt(probe)
            await self.cold_start()
            for level in levels:
                await self.grow(level, task)
                await self.visit(level, probe, "up")
                if level == p.memory_n:
                    await self.measure_fleet_memory()
            await self.grow(top, task)
            await self.bench_throughput()
            for level in reversed(levels):
                before = len(self.fleet)
                await self.shrink(level)
                self.progress.advance(task, before - level)
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

        for i in range(p.live_starts):
            for step in ((cold, block) if (i + (direction == "down")) % 2 == 0 else (block, cold)):
                await step()
        self.extra["visits"].append({"level": level, "direction": direction,
                                     "fleet": len(self.fleet), "loadavg": list(os.getloadavg())})

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
            cg = cgroup_memory(cid)
            if cg is None:
                raise BenchError(f"no memory cgroup found for container {cid[:12]} under {CGROUP}")
            pid = self.docker.api.inspect_container(cid)["State"]["Pid"]
            shim_pid = parent_pid(pid) if pid else None
            shim = proc_memory(shim_pid).get("Pss", 0) if shim_pid else 0
            self.rec.add(f"mem.{prefix}.usage", cg["usage"] / MiB)
            self.rec.add(f"mem.{prefix}.anon", cg["anon"] / MiB)
            self.rec.add(f"mem.{prefix}.host", (cg["usage"] + shim) / MiB)
            if f"mem.{prefix}.shim" in self.rec.series:
                self.rec.add(f"mem.{prefix}.shim", shim / MiB)

    async def measure_fleet_memory(self) -> None:
        self.load("memory of idle sessions")
        sessions = self.fleet[: self.plan.memory_n]
        await asyncio.sleep(1.0)  # let the last started kernels settle
        ids = [s.container_id for s in sessions]
        await asyncio.to_thread(self.container_memory, "idle", ids)
        stats = await asyncio.to_thread(docker_stats, [i[:12] for i in ids])
        for value in stats.values():
            self.rec.add("mem.idle.docker_stats", value / MiB)
        # While they are idle, how much CPU do they (and this process) use?
        before = [cgroup_cpu_seconds(i) for i in ids]
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(2.0)
        wall = time.perf_counter() - t0
        after = [cgroup_cpu_seconds(i) for i in ids]
        if None not in before and None not in after:
            self.extra["memory"]["idle_cpu"] = {
                "sessions": len(ids), "seconds": wall,
                "containers_cores": sum(a - b for a, b in zip(after, before, strict=True)) / wall,  # type: ignore[operator]
                "this_process_cores": (time.process_time() - cpu0) / wall}
        mem = self.extra["memory"]
        mem["available_mib_at_n"] = (_meminfo_kib("MemAvailable") or 0) / 1024
        mem["fleet_at_n"] = len(self.fleet)

    async def bench_pool_memory(self) -> None:
        """Kernels waiting in a SessionManager's warm pool: started, never used."""
        from sandbox import ManagerConfig, SessionManager
        from sandbox._runtime.base import LABEL_MANAGER, LABEL_OWNER_PID

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
                m = proc_memory(k.km.provisioner.process.pid)
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
        task = self._task("throughput: " + " · ".join(f"{c} sessions" for c in p.concurrency),
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
                b["loadavg"] = list(os.getloadavg())
                self.extra["bursts"].append(b)
                self.progress.advance(task)

    # 4. failure paths --------------------------------------------------------------------------
    def define_failures(self) -> None:
        r = self.rec
        for key, group, label, note in [
            ("fail.natural.overshoot", "timeout", "cell that ends by itself after 1 s: total − 1 s",
             "time.sleep(1), no timeout hit"),
            ("fail.interrupt.overshoot", "timeout", "timeout=1, interrupted: total − 1 s",
             "time.sleep(60); SIGINT at the limit, KeyboardInterrupt, kernel kept"),
            ("fail.restart.overshoot", "timeout", "timeout=1, SIGINT ignored: total − 1 s",
             "SIGINT, interrupt_grace_s, then a fresh kernel in the same container"),
            ("fail.restart.work", "timeout", "… of which the restart (less the 2 s grace)",
             "kill + start of the kernel through agentbox-init, until it answers"),
            ("fail.next.natural", "timeout", "next 1+1 after a cell that ended by itself", ""),
            ("fail.next.interrupt", "timeout", "next 1+1 after the interrupted timeout", ""),
            ("fail.next.restart", "timeout", "next 1+1 after the restart (first cell of a "
             "fresh kernel)", ""),
            ("fail.rt", "death", "1+1 on a healthy session", "interleaved with the deaths"),
            ("fail.died.detect", "death", "os._exit(1) in a cell → result 'died'",
             "call to result; agentbox-init reports the exit"),
            ("fail.died.next", "death", "next 1+1 after the death (kernel restarted in place)", ""),
            ("fail.kill.call", "death", "docker kill (the engine API call)",
             "SIGKILL to PID 1; returns once the engine has seen the exit"),
            ("fail.kill.detect", "death", "docker kill → session.state 'dead'",
             "from the start of the kill call"),
            ("fail.kill.after", "death", "… after the kill call returned", ""),
            ("fail.kill.next", "death", "next 1+1 after the kill (container replaced)", ""),
            ("fail.cold", "death", "cold start (AsyncSession().start())",
             "interleaved with the restarts and deaths"),
        ]:
            r.define(key, group, label, note)
        r.compare("timeout", "timeout → usable (interrupt) / cell ending by itself",
                  "fail.interrupt.overshoot", "fail.natural.overshoot")
        r.compare("timeout", "timeout → usable (restart) / cell ending by itself",
                  "fail.restart.overshoot", "fail.natural.overshoot")
        r.compare("timeout", "kernel restart work / cold start", "fail.restart.work", "fail.cold")
        r.compare("timeout", "next 1+1 after interrupt / after a normal cell",
                  "fail.next.interrupt", "fail.next.natural")
        r.compare("timeout", "next 1+1 after restart / after a normal cell",
                  "fail.next.restart", "fail.next.natural")
        r.compare("death", "os._exit → 'died' / healthy 1+1", "fail.died.detect", "fail.rt")
        r.compare("death", "1+1 after a death (restart in place) / cold start", "fail.died.next",
                  "fail.cold")
        r.compare("death", "docker kill → 'dead' / the kill call itself", "fail.kill.detect",
                  "fail.kill.call")
        r.compare("death", "1+1 after docker kill (new container) / cold start",
                  "fail.kill.next", "fail.cold")

    async def bench_failures(self) -> None:
        from sandbox import SessionState

        p, r = self.plan, self.rec
        self.define_failures()
        grace = None
        session = await self.new_session()
        try:
            grace = session.config.interrupt_grace_s
            await self.rt(session)

            async def natural() -> None:
                elapsed, result = await self.timed(session, SLEEP_1, timeout=30)
                if result.status != "ok":
                    raise BenchError(f"time.sleep(1) ended {result.status}: {result.notes}")
                r.add("fail.natural.overshoot", elapsed - LIMIT_S)
                r.add("fail.next.natural", await self.rt(session))

            async def timeout(code: str, path: str) -> float:
                elapsed, result = await self.timed(session, code, timeout=LIMIT_S)
                ended = result.timeout.ended_by if result.timeout else None
                if result.status != "timeout" or ended != path:
                    raise BenchError(f"expected a timeout ended by {path}, got {result.status} "
                                     f"({ended}): {result.notes}")
                r.add(f"fail.{path}.overshoot", elapsed - LIMIT_S)
                r.add(f"fail.next.{path}", await self.rt(session))
                return elapsed

            async def cold() -> None:
                r.add("fail.cold", (await self.cold_start()).phases["total"])

            self.load("failures: timeout → interrupt")
            # The first KeyboardInterrupt of a fresh kernel also loads IPython's traceback
            # machinery: timed once, apart (context), then the recorded ones.
            elapsed, result = await self.timed(session, SLEEP_LONG, timeout=LIMIT_S)
            if result.status != "timeout":
                raise BenchError(f"expected a timeout, got {result.status}: {result.notes}")
            self.extra["checks"]["first_interrupt_overshoot_s"] = elapsed - LIMIT_S
            await self.rt(session)
            task = self._task("timeout: interrupt · cell ending by itself", p.interrupt)
            for i in range(p.interrupt):
                if i % 2:
                    await natural()
                await timeout(SLEEP_LONG, "interrupt")
                if i % 2 == 0:
                    await natural()
                self.progress.advance(task)

            self.load("failures: timeout → restart")
            task = self._task("timeout: restart (SIGINT ignored) · cold start", p.restart)
            for i in range(p.restart):
                elapsed = await timeout(IGNORE_SIGINT, "restart")
                r.add("fail.restart.work", elapsed - LIMIT_S - grace)
                await (natural() if i % 2 else cold())
                await (cold() if i % 2 else natural())
                self.progress.advance(task)

            self.load("failures: os._exit")
            task = self._task("kernel death: os._exit · healthy 1+1 · cold start", p.died)
            for _ in range(p.died):
                r.add("fail.rt", await self.rt(session))
                elapsed, result = await self.timed(session, EXIT, timeout=30)
                if result.status != "died":
                    raise BenchError(f"os._exit ended {result.status}, not died: {result.notes}")
                r.add("fail.died.detect", elapsed)
                elapsed, result = await self.timed(session)
                check_lib(TRIVIAL, result)
                if not result.kernel_restarted:
                    raise BenchError("the cell after a kernel death did not restart the kernel")
                r.add("fail.died.next", elapsed)
                await cold()
                self.progress.advance(task)

            self.load("failures: docker kill")
            task = self._task("docker kill from outside · cold start", p.killed)
            for _ in range(p.killed):
                r.add("fail.rt", await self.rt(session))
                cid = session.container_id
                t0 = time.perf_counter()
                await asyncio.to_thread(self.docker.api.kill, cid)
                t1 = time.perf_counter()
                while session.state is not SessionState.DEAD:
                    if time.perf_counter() - t1 > 15:
                        raise BenchError("session.state did not become dead within 15 s of "
                                         f"docker kill (it is {session.state.value})")
                    await asyncio.sleep(0.001)
                t2 = time.perf_counter()
                r.add("fail.kill.call", t1 - t0)
                r.add("fail.kill.detect", t2 - t0)
                r.add("fail.kill.after", t2 - t1)
                elapsed, result = await self.timed(session)
                check_lib(TRIVIAL, result)
                if not result.kernel_restarted or session.container_id == cid:
                    raise BenchError("the cell after docker kill did not get a new container")
                r.add("fail.kill.next", elapsed)
                await cold()
                self.progress.advance(task)
        finally:
            await self.close(session)
        self.extra["checks"]["interrupt_grace_s"] = grace

    # 5. isolation ------------------------------------------------------------------------------
    def runsc_registered(self) -> bool:
        return "runsc" in (self.docker.info().get("Runtimes") or {})

    async def bench_isolation(self) -> None:
        r, p, g = self.rec, self.plan, "isolation"
        runtimes = ("runc", "runsc")
        for rt in runtimes:
            r.define(f"iso.{rt}.cold", g, f"{rt}: cold start total", "session.phases['total']")
            r.define(f"iso.{rt}.container_start", g, f"{rt}: container_start")
            r.define(f"iso.{rt}.kernel_ready", g, f"{rt}: kernel_ready")
            r.define(f"iso.{rt}.close", g, f"{rt}: close()")
            r.define(f"iso.{rt}.rt", g, f"{rt}: 1+1 round trip")
            r.define(f"iso.{rt}.df", g, f"{rt}: 10,000-row DataFrame display")
            r.define(f"iso.{rt}.mem", g, f"{rt}: idle container, host memory",
                     "cgroup usage + shim PSS, after one 1+1", unit="MiB")
        for key, label in (("cold", "cold start"), ("container_start", "container_start"),
                           ("kernel_ready", "kernel_ready"), ("close", "close()"),
                           ("rt", "1+1"), ("df", "DataFrame display"), ("mem", "idle memory")):
            r.compare(g, f"{label}: runsc / runc", f"iso.runsc.{key}", f"iso.runc.{key}")
        if not self.runsc_registered():
            self.extra["checks"]["runsc"] = "not registered with the engine: run `make engine-gvisor`"
            return
        self.extra["checks"]["runsc"] = "registered"

        self.load("isolation: cold starts")
        task = self._task("cold start: runc · runsc", p.iso_cold)
        first = 0 if p.iso_warmup else 1
        for i in range(first, p.iso_cold + 1):  # i == 0: a warm-up pair, not recorded
            for rt in (runtimes if i % 2 else runtimes[::-1]):
                session = await self.new_session(rt)
                try:
                    check_lib(TRIVIAL, await session.execute(TRIVIAL))
                    cid = session.container_id
                    before = len(r.series[f"iso.{rt}.mem"]["samples"])
                    await asyncio.to_thread(self.container_memory_one, rt, cid)
                finally:
                    close_s = await self.close(session)
                if i == 0:
                    del r.series[f"iso.{rt}.mem"]["samples"][before:]
                    continue
                for phase in ("container_start", "kernel_ready"):
                    r.add(f"iso.{rt}.{phase}", session.phases[phase])
                r.add(f"iso.{rt}.cold", session.phases["total"])
                r.add(f"iso.{rt}.close", close_s)
            if i:
                self.progress.advance(task)

        self.load("isolation: cells")
        sessions = {rt: await self.new_session(rt) for rt in runtimes}
        try:
            for code, key, n in ((TRIVIAL, "rt", p.iso_rt), (DATAFRAME, "df", p.iso_df)):
                for rt in runtimes:
                    for _ in range(3):
                        await self.rt(sessions[rt], code)
                task = self._task(f"{'1+1' if key == 'rt' else 'DataFrame'}: runc · runsc", 2 * n)
                block = min(p.block, n)
                for i in range(0, n, block):
                    k = min(block, n - i)
                    for rt in (runtimes if (i // block) % 2 == 0 else runtimes[::-1]):
                        for _ in range(k):
                            r.add(f"iso.{rt}.{key}", await self.rt(sessions[rt], code))
                            self.progress.advance(task)
        finally:
            for s in sessions.values():
                await self.close(s)

    def container_memory_one(self, runtime: str, cid: str) -> None:
        cg = cgroup_memory(cid)
        if cg is None:
            raise BenchError(f"no memory cgroup found for container {cid[:12]}")
        pid = self.docker.api.inspect_container(cid)["State"]["Pid"]
        shim_pid = parent_pid(pid) if pid else None
        shim = proc_memory(shim_pid).get("Pss", 0) if shim_pid else 0
        self.rec.add(f"iso.{runtime}.mem", (cg["usage"] + shim) / MiB)


# -- derived figures -------------------------------------------------------------------------------
def thin_latencies(rec: Recorder, keep: int = LATENCY_KEEP) -> dict[str, int]:
    """Keep a uniform sample of *keep* per-cell latencies per level (seeded); the counts."""
    counts = {}
    for key, s in rec.series.items():
        if key.endswith(".lat"):
            counts[key] = len(s["samples"])
            if len(s["samples"]) > keep:
                s["samples"] = random.Random(key).sample(s["samples"], keep)
    return counts


def capacity(data: dict[str, Any]) -> dict[str, Any]:
    """How many sessions fit in memory, extrapolated from the per-session figures:

    N_idle  = floor((MemAvailable_before - reserve) / (idle host memory p50 + this process's
              memory per session))
    N_limit = floor((MemTotal - reserve) / (memory limit + shim p50 + this process's memory
              per session)) — every session using all of its memory limit
    with reserve = 10% of MemTotal for the host, the engine and the page cache.
    """
    series, mem, m = data["series"], data["memory"], data["machine"]
    if not series.get("mem.idle.host", {}).get("stats"):
        return {}
    total = m["memory_total_mib"]
    reserve = RESERVE_FRACTION * total
    host = data["host_process"]
    levels = sorted(int(k) for k in host)
    top = levels[-1]
    per_proc = ((host[str(top)]["rss_mib"] - host["0"]["rss_mib"]) / top) if top else 0.0
    threads = ((host[str(top)]["threads"] - host["0"]["threads"]) / top) if top else 0.0
    idle = series["mem.idle.host"]["stats"]["p50"]
    pool = series.get("mem.pool.host", {}).get("stats", {}).get("p50")
    shim = series["mem.idle.shim"]["stats"]["p50"]
    avail = mem["available_mib_before"]
    limit_mb = data["session_memory_limit_mb"]
    per_idle = idle + max(per_proc, 0.0)
    out = {
        "reserve_mib": reserve,
        "available_mib_before": avail,
        "host_process_mib_per_session": per_proc,
        "host_process_threads_per_session": threads,
        "per_idle_session_mib": per_idle,
        "max_idle_sessions": math.floor((avail - reserve) / per_idle),
        "per_session_at_limit_mib": limit_mb + shim + max(per_proc, 0.0),
        "max_sessions_at_limit": math.floor((total - reserve) / (limit_mb + shim + max(per_proc, 0))),
    }
    if pool:
        out["per_pooled_kernel_mib"] = pool + max(per_proc, 0.0)
        out["max_pooled_kernels"] = math.floor((avail - reserve) / out["per_pooled_kernel_mib"])
    if mem.get("available_mib_at_n") is not None and mem.get("fleet_at_n"):
        out["meminfo_delta_mib_per_session"] = ((avail - mem["available_mib_at_n"])
                                                / mem["fleet_at_n"])
    return out


def scale_headlines(data: dict[str, Any]) -> list[str]:
    s, comps = data["series"], {c["figure"]: c for c in data["comparisons"] if "ratio" in c}
    out = []
    levels = data["plan"]["concurrency"]
    base, top = levels[0], levels[-1]
    if s.get(f"tput.{top}", {}).get("stats") and s.get(f"tput.{base}", {}).get("stats"):
        best = max(levels, key=lambda c: s[f"tput.{c}"]["stats"]["p50"])
        c = comps.get(f"throughput: {best} / {base} session(s)")
        out.append(f"{s[f'tput.{base}']['stats']['p50']:.0f} cells/s with {base} session, "
                   f"{s[f'tput.{best}']['stats']['p50']:.0f} at best ({best} sessions"
                   + (f", {fmt_ratio(c['ratio'])}" if c else "") + ")")
    cap = data.get("capacity") or {}
    if cap:
        out.append(f"idle session {cap['per_idle_session_mib']:.0f} MiB of host memory → "
                   f"≈{cap['max_idle_sessions']} idle sessions fit "
                   f"({cap['max_sessions_at_limit']} if each used its "
                   f"{data['session_memory_limit_mb']} MiB limit)")
    c = comps.get("cold start: runsc / runc")
    rt = comps.get("1+1: runsc / runc")
    if c and rt:
        out.append(f"gVisor: cold start {fmt_ratio(c['ratio'])}, 1+1 {fmt_ratio(rt['ratio'])} "
                   "of runc")
    i, rs = s.get("fail.interrupt.overshoot", {}).get("stats"), s.get(
        "fail.restart.overshoot", {}).get("stats")
    if i and rs:
        out.append(f"timeout → usable kernel: +{fmt_ms(i['p50'])} (interrupt), "
                   f"+{fmt_ms(rs['p50'])} (restart)")
    return out


# -- the run ---------------------------------------------------------------------------------------
async def run(plan: Plan, console: Any) -> dict[str, Any]:
    from sandbox import SandboxConfig

    started = time.perf_counter()
    with progress_display(console) as progress:
        bench = Scale(plan, progress)
        check_image(bench.docker, bench.image)
        machine = machine_info(bench.docker, bench.image)
        try:
            bench.load("start")
            bench.define_memory()
            await bench.bench_host_kernel_memory()
            await bench.bench_fleet()
            await bench.bench_pool_memory()
            await bench.bench_failures()
            await bench.bench_isolation()
            bench.load("end")
        finally:
            await bench.close_all()
    latency_counts = thin_latencies(bench.rec)
    bench.rec.finish()
    machine["loadavg_at_end"] = list(os.getloadavg())
    checks = {**bench.extra["checks"], "latencies_recorded": latency_counts,
              "leaked_containers": agentbox_containers(bench.docker, mine=True)}
    data: dict[str, Any] = {
        "schema": SCHEMA,
        "benchmark": "scale",
        "mode": plan.mode,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "duration_s": round(time.perf_counter() - started, 1),
        "plan": plan.__dict__,
        "git": git_state(),
        "machine": machine,
        "session_memory_limit_mb": SandboxConfig().memory_mb,
        "load": bench.extra["load"],
        "visits": bench.extra["visits"],
        "bursts": bench.extra["bursts"],
        "fleet_starts": bench.extra["fleet_starts"],
        "host_process": bench.extra["host_process"],
        "memory": bench.extra["memory"],
        "checks": checks,
        "series": bench.rec.series,
        "comparisons": bench.rec.comparisons,
    }
    data["capacity"] = capacity(data)
    data["headlines"] = scale_headlines(data)
    return data


# -- reporting -------------------------------------------------------------------------------------
GROUPS = [
    ("tput", "1. Throughput: cells per second against concurrent sessions",
     "Each of *c* warm sessions runs `await session.execute(\"1+1\")` in a loop, all in this "
     "process's one asyncio loop, for a fixed time (a burst); cells/s is every cell completed "
     "in the burst over its length. The levels take turns, burst after burst, in rotating "
     "order, so that each level sees the same machine; all the sessions of the largest level "
     "stay alive throughout (the others idle). Baseline: one session. Latency is each cell's "
     "call-to-result time; CPU per cell is this process's CPU time (all threads) over the "
     "cells; busy is the fraction of the machine's CPUs not idle during the burst."),
    ("memory", "2. Memory per session, and how many fit",
     "Read from the container's memory cgroup (`/sys/fs/cgroup/memory/docker/<id>/` on this "
     "cgroup v1 host: `memory.usage_in_bytes`, and `total_rss` of `memory.stat` for the "
     "processes' private memory) and from the engine's per-container `containerd-shim` "
     "process (PSS, so its shared pages are split among the shims). *Idle session*: started, "
     "one `1+1` run, then idle, read with this many idle sessions alive; *pooled kernel*: a "
     "session waiting in `SessionManager(ManagerConfig(pool_size=…))`'s warm pool, never used. "
     "Baseline: an ipykernel on the host, after one `1+1` (RSS from `/proc`)."),
    ("live", "3. Start and round trip against live idle sessions",
     "With *n* idle sessions alive (started a few at a time, one `1+1` each), cold starts "
     "(`AsyncSession().start()`, phases['total'], then closed) alternate with blocks of "
     "`1+1` on a warm session. Each level is visited twice, going up and coming back down "
     "(after the throughput bursts at the top), and both visits pool their samples, so a "
     "drift of the machine's load during the run cancels out. Baseline: the same figure with "
     "no idle session alive."),
    ("timeout", "4a. Failure paths: a cell over its time limit",
     "One session; `execute(code, timeout=1)`. *Interrupted*: `time.sleep(60)` gets SIGINT at "
     "the limit (KeyboardInterrupt, state kept). *SIGINT ignored*: the cell ignores SIGINT "
     "and loops; after `interrupt_grace_s` (2 s by default) the session kills it and starts "
     "a fresh kernel in the same container. The figure is the call's total minus the 1 s "
     "limit: from the limit to the result, when the kernel is usable again (the next `1+1` "
     "is timed too). Baseline: `time.sleep(1)` without a limit, minus 1 s, interleaved; and "
     "for the restart itself, a cold start."),
    ("death", "4b. Failure paths: a kernel that dies",
     "*os._exit*: `import os; os._exit(1)` in a cell; timed from the call to the result with "
     "status `died` (agentbox-init reports the exit through its socket). *docker kill*: "
     "`docker kill` of the session's container from outside (the engine API, SIGKILL); "
     "timed until `session.state` is `dead` (polled every millisecond). After each, the "
     "next `1+1` recovers: a new kernel in place after os._exit, a new container after the "
     "kill. Baselines: a `1+1` on the healthy session and a cold start, interleaved."),
    ("isolation", "5. Isolation: gVisor (runsc) against runc",
     "`AsyncSession(SandboxConfig(runtime=\"runsc\"))` against the default `runc`, same "
     "settings otherwise; cold starts alternate which runtime goes first, and the cells "
     "alternate in blocks on one warm session of each. Idle memory as in table 2 (cgroup "
     "usage + shim), after the first `1+1`."),
]


def render_markdown(data: dict[str, Any], plot: str | None) -> str:
    m, series, checks = data["machine"], data["series"], data["checks"]
    lines = [
        "# Benchmarks: scale, failure paths, isolation",
        "",
        "<!-- Generated by bench/bench_scale.py; edit the script, not this file. -->",
        "",
        f"Measured {data['date']} in **{data['mode']}** mode ({data['duration_s']:.0f} s). "
        "Every figure stands beside a baseline measured in the same run, interleaved with it; "
        "this machine is shared (the load average of every phase is at the end), so **read "
        "the ratios**; absolute times are context. The front page with the other reports is "
        "[benchmarks.md](benchmarks.md).",
        "",
        "Reproduce from the repository root:",
        "",
        "```sh",
        ".venv/bin/python bench/bench_scale.py" + (" --quick" if data["mode"] == "quick" else ""),
        "```",
        "",
        f"This run: `{data['command']}`; raw samples in "
        f"`{data.get('out', 'bench/results/scale.json')}`.",
        "",
        "Columns: percentiles are linear-interpolated over the *n* samples (with small *n*, "
        "p99 is close to the maximum); spread is min – max and the standard deviation; ratio "
        "is subject p50 / baseline p50 with a 95% bootstrap interval in brackets.",
        "",
        "## Headlines",
        "",
        *[f"- {h}" for h in data.get("headlines", [])],
        *contention_note(m),
        "",
    ]
    for group, title, text in GROUPS:
        keys = [k for k, s in series.items() if s["group"] == group and s.get("stats")]
        lines += [f"## {title}", "", text, ""]
        if group == "isolation" and checks.get("runsc") != "registered":
            lines += [f"Not measured: runsc {checks.get('runsc', 'unknown')}.", ""]
            continue
        if group == "tput":
            lines += _throughput_table(data)
        if group == "live":
            lines += _live_table(data)
        if group == "memory":
            lines += _capacity_lines(data)
        lines += [*series_table(data, keys), ""]
        lines += _notes(data, group)
    if plot:
        lines += ["## Plots", "", f"![throughput, growth, memory, failure paths]({plot})", ""]
    lines += _machine_lines(data, m)
    return "\n".join(lines)


def _throughput_table(data: dict[str, Any]) -> list[str]:
    s = data["series"]
    levels = data["plan"]["concurrency"]
    base = s.get(f"tput.{levels[0]}", {}).get("stats")
    if not base:
        return []
    busy = {c: [b["machine_busy"] for b in data["bursts"] if b["sessions"] == c] for c in levels}
    lines = ["| sessions | cells/s p50 (min – max) | per session | × 1 session | latency p50 / "
             "p95 / p99 | CPU of this process per cell | machine CPU busy |",
             "|--:|--:|--:|--:|--:|--:|--:|"]
    for c in levels:
        t, lat, cpu = (s[f"tput.{c}{k}"]["stats"] for k in ("", ".lat", ".cpu"))
        lines.append(f"| {c} | **{t['p50']:.0f}** ({t['min']:.0f} – {t['max']:.0f}) | "
                     f"{t['p50'] / c:.1f} | {fmt_ratio(t['p50'] / base['p50'])} | "
                     f"{fmt_ms(lat['p50'])} / {fmt_ms(lat['p95'])} / {fmt_ms(lat['p99'])} | "
                     f"{fmt_ms(cpu['p50'])} | {_median(busy[c]):.0%} |")
    return [*lines, ""]


def _median(xs: Sequence[float]) -> float:
    return percentile(xs, 50) if xs else math.nan


def _live_table(data: dict[str, Any]) -> list[str]:
    s = data["series"]
    levels = sorted(data["plan"]["live_levels"])
    if not s.get("live.0.cold", {}).get("stats"):
        return []
    lines = ["| idle sessions alive | cold start p50 | × at 0 | 1+1 p50 | × at 0 |",
             "|--:|--:|--:|--:|--:|"]
    for n in levels:
        c, rt = s[f"live.{n}.cold"]["stats"], s[f"live.{n}.rt"]["stats"]
        lines.append(f"| {n} | {fmt_ms(c['p50'])} | "
                     f"{fmt_ratio(c['p50'] / s['live.0.cold']['stats']['p50'])} | "
                     f"{fmt_ms(rt['p50'])} | {fmt_ratio(rt['p50'] / s['live.0.rt']['stats']['p50'])} |")
    return [*lines, ""]


def _capacity_lines(data: dict[str, Any]) -> list[str]:
    cap = data.get("capacity") or {}
    if not cap:
        return []
    m = data["machine"]
    lim = data["session_memory_limit_mb"]
    lines = [
        "**How many sessions this machine holds** (extrapolated; the benchmark does not start "
        "sessions until memory runs out):",
        "",
        "```",
        "N_idle  = floor((MemAvailable − reserve) / (idle session p50 + this process per session))",
        f"        = floor(({cap['available_mib_before']:,.0f} − {cap['reserve_mib']:,.0f}) / "
        f"({cap['per_idle_session_mib'] - cap['host_process_mib_per_session']:.1f} + "
        f"{cap['host_process_mib_per_session']:.1f})) = {cap['max_idle_sessions']}",
        "N_limit = floor((MemTotal − reserve) / (memory limit + shim p50 + this process per session))",
        f"        = floor(({m['memory_total_mib']:,} − {cap['reserve_mib']:,.0f}) / "
        f"{cap['per_session_at_limit_mib']:,.1f}) = {cap['max_sessions_at_limit']}",
        "```",
        "",
        f"- reserve = {RESERVE_FRACTION:.0%} of MemTotal, for the host, the engine and the page "
        "cache; MemAvailable was read before the first idle session started (other work on the "
        "machine included).",
        f"- *This process per session*: the growth of the benchmark process's RSS from 0 to "
        f"{max(int(k) for k in data['host_process'])} live sessions, per session "
        f"({cap['host_process_mib_per_session']:.2f} MiB; also "
        f"{cap['host_process_threads_per_session']:.1f} threads per session).",
    ]
    if "max_pooled_kernels" in cap:
        lines.append(f"- Pooled kernels: {cap['per_pooled_kernel_mib']:.1f} MiB each, so "
                     f"≈{cap['max_pooled_kernels']} would fit the same way.")
    if "meminfo_delta_mib_per_session" in cap:
        lines.append(f"- Cross-check, noisy because other work shares the machine: MemAvailable "
                     f"fell by {cap['meminfo_delta_mib_per_session']:.1f} MiB per idle session "
                     "between no session and the memory reading.")
    idle_cpu = data["memory"].get("idle_cpu")
    if idle_cpu:
        lines.append(f"- Idle means idle: over {idle_cpu['seconds']:.0f} s, the "
                     f"{idle_cpu['sessions']} idle containers used "
                     f"{idle_cpu['containers_cores'] * 100:.2f}% of one CPU together, this "
                     f"process {idle_cpu['this_process_cores'] * 100:.2f}%.")
    lines += [
        f"- N_idle holds only while sessions stay idle: each may grow to its {lim} MiB limit, "
        f"and {cap['max_sessions_at_limit']} is what fits if all of them do. Before memory, the "
        "software caps: `ManagerConfig.max_sessions` (64) and the API's `max_sessions` (32). "
        "CPU is not a limit for idle sessions; for busy ones see table 1.",
        "",
    ]
    return lines


def _notes(data: dict[str, Any], group: str) -> list[str]:
    notes: list[str] = []
    checks = data["checks"]
    if group == "tput":
        counts = checks.get("latencies_recorded", {})
        kept = [f"{k.split('.')[1]}: {n:,}" for k, n in counts.items() if n > LATENCY_KEEP]
        if kept:
            notes.append(f"- Latency rows are a uniform sample of {LATENCY_KEEP:,} cells of the "
                         f"cells timed per level ({', '.join(kept)}).")
        notes.append("- Cells per second are bounded by this one host process (one asyncio loop, "
                     "one GIL) and by the 2 CPUs it shares with the kernels and the engine; each "
                     "kernel is limited to 1 CPU.")
    if group == "death":
        notes.append("- docker kill is noticed when agentbox-init's socket connection breaks; "
                     "the session then asks the engine whether the container still runs "
                     "(every 50 ms, for up to 1.5 s) before it declares the session dead.")
    if group == "timeout" and checks.get("interrupt_grace_s") is not None:
        notes.append(f"- interrupt_grace_s was {checks['interrupt_grace_s']:g} s (the default).")
    if group == "timeout" and checks.get("first_interrupt_overshoot_s") is not None:
        notes.append(f"- The session's first interrupted timeout, not in the table: "
                     f"{fmt_ms(checks['first_interrupt_overshoot_s'])} after the limit; the "
                     "first KeyboardInterrupt (the first traceback) of a fresh kernel also "
                     "loads IPython's traceback machinery.")
    if group == "live":
        failed = checks.get("fleet_start_failures") or []
        if failed:
            notes.append(f"- {len(failed)} idle-session start(s) failed and were retried "
                         f"(first: {failed[0]}).")
        fleet = data.get("fleet_starts") or []
        if fleet:
            notes.append("- Idle sessions were started " + str(fleet[0]["parallel"])
                         + " at a time: " + ", ".join(f"{f['from']}→{f['to']} in {f['seconds']:.1f} s"
                                                      for f in fleet) + ".")
    return [*notes, ""] if notes else []


def _machine_lines(data: dict[str, Any], m: dict[str, Any]) -> list[str]:
    git = data.get("git") or {}
    mod = git.get("modified") or []
    lines = [
        "## Machine and load",
        "",
        "| | |",
        "|---|---|",
        f"| platform | {m['platform']} |",
        f"| CPU | {m['cpu_model']}, {m['cpu_count']} logical CPUs |",
        f"| memory | {m['memory_total_mib']} MiB total, {m.get('memory_available_mib_at_start')} "
        "MiB available at the start |",
        f"| Docker | {m['docker_version']}, storage {m['docker_storage_driver']}, cgroup "
        f"v{m['docker_cgroup_version']}, runtimes {', '.join(m.get('docker_runtimes') or [])} |",
        f"| kernel image | `{m['image']}` ({m['image_size_mb']} MB) |",
    ]
    if git.get("commit"):
        lines.append(f"| code | commit `{git['commit'][:12]}`"
                     + (f", with uncommitted changes in {', '.join(f'`{p}`' for p in mod)}"
                        if mod else "") + " |")
    lines += ["", "Load average (1 / 5 / 15 min) at each phase:", "",
              "| at | phase | load |", "|--:|---|---|"]
    lines += [f"| {x['at_s']:.0f} s | {x['phase']} | {_load(x['loadavg'])} |"
              for x in data.get("load", [])]
    leaks = data["checks"].get("leaked_containers", [])
    lines += ["", f"Containers of this run left behind: {len(leaks)}"
              + (f" ({', '.join(leaks)})" if leaks else "") + " (by the `org.agentbox.owner-pid` "
              "label).", ""]
    return lines


def make_plot(data: dict[str, Any], path: Path) -> bool:
    """Four panels: throughput, growth with live sessions, memory, failure paths + runsc."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    s = data["series"]

    def p50(key: str) -> float | None:
        st = s.get(key, {}).get("stats")
        return st["p50"] if st else None

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    (a, b), (c, d) = axes
    levels = [n for n in data["plan"]["concurrency"] if p50(f"tput.{n}") is not None]
    if levels:
        rates = [s[f"tput.{n}"]["stats"] for n in levels]
        a.errorbar(levels, [r["p50"] for r in rates],
                   yerr=[[r["p50"] - r["min"] for r in rates], [r["max"] - r["p50"] for r in rates]],
                   marker="o", capsize=3, label="cells/s (p50, min–max)")
        a.set_xscale("log", base=2)
        a.set_xticks(levels, [str(n) for n in levels])
        a.set_xlabel("concurrent sessions running 1+1")
        a.set_ylabel("cells per second (all sessions)")
        a2 = a.twinx()
        a2.plot(levels, [(p50(f"tput.{n}.lat") or 0) * 1000 for n in levels], "s--", color="C1",
                label="cell latency p50 (ms)")
        a2.set_ylabel("latency p50, ms")
        a.legend(loc="upper left", fontsize=8)
        a2.legend(loc="lower right", fontsize=8)
        a.set_title("throughput against concurrency", fontsize=10)
    live = sorted(data["plan"]["live_levels"])
    if p50("live.0.cold") and p50("live.0.rt"):
        b.plot(live, [(p50(f"live.{n}.cold") or math.nan) / p50("live.0.cold") for n in live],
               "o-", label="cold start p50 (× at 0)")
        b.plot(live, [(p50(f"live.{n}.rt") or math.nan) / p50("live.0.rt") for n in live],
               "s-", label="1+1 p50 (× at 0)")
        b.axhline(1.0, color="black", linewidth=0.8)
        b.set_xlabel("idle sessions alive")
        b.set_ylabel("ratio to no idle session")
        b.legend(fontsize=8)
        b.set_title("start and round trip with live sessions", fontsize=10)
    bars = [(label, p50(key)) for label, key in (
        ("host ipykernel RSS", "mem.local.rss"), ("idle session: host", "mem.idle.host"),
        ("idle session: cgroup anon", "mem.idle.anon"), ("idle session: shim PSS", "mem.idle.shim"),
        ("pooled kernel: host", "mem.pool.host"), ("runc idle: host", "iso.runc.mem"),
        ("runsc idle: host", "iso.runsc.mem")) if p50(key) is not None]
    if bars:
        c.barh([x[0] for x in bars], [x[1] for x in bars])
        c.invert_yaxis()
        c.set_xlabel("MiB (p50)")
        c.tick_params(axis="y", labelsize=8)
        c.set_title("memory per session", fontsize=10)
    times = [(label, p50(key)) for label, key in (
        ("timeout → usable: interrupt", "fail.interrupt.overshoot"),
        ("timeout → usable: restart", "fail.restart.overshoot"),
        ("1 s cell ending by itself: overshoot", "fail.natural.overshoot"),
        ("os._exit → died", "fail.died.detect"), ("docker kill → dead", "fail.kill.detect"),
        ("1+1 after death", "fail.died.next"), ("1+1 after docker kill", "fail.kill.next"),
        ("cold start runc", "iso.runc.cold"), ("cold start runsc", "iso.runsc.cold"),
        ("1+1 runc", "iso.runc.rt"), ("1+1 runsc", "iso.runsc.rt")) if p50(key)]
    if times:
        d.barh([x[0] for x in times], [max(x[1] or 0, 1e-6) * 1000 for x in times])
        d.invert_yaxis()
        d.set_xscale("log")
        d.set_xlabel("milliseconds (p50, log scale)")
        d.tick_params(axis="y", labelsize=8)
        d.set_title("failure paths and gVisor", fontsize=10)
    fig.suptitle(f"agentbox scale benchmark, {data['mode']} mode, {data['date'][:10]}")
    return save_figure(fig, path, dpi=100)


def write_report(data: dict[str, Any], report: Path, console: Any) -> None:
    write_markdown(data, report, console, render=render_markdown, plot=make_plot,
                   plot_name=PLOT_NAME)


def print_summary(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"agentbox scale benchmark ({data['mode']}, {data['duration_s']:.0f} s)")
    for col in ("figure", "p50", "baseline p50", "ratio [95% CI]"):
        table.add_column(col, justify="left" if col == "figure" else "right")
    for c in data["comparisons"]:
        if "ratio" not in c:
            continue
        st, b = data["series"][c["subject"]], data["series"][c["baseline"]]
        lo, hi = c["ratio_ci95"]
        table.add_row(c["figure"], fmt_value(st["stats"]["p50"], st.get("unit", "s")),
                      fmt_value(b["stats"]["p50"], b.get("unit", "s")),
                      f"{fmt_ratio(c['ratio'])} [{fmt_ratio(lo)}–{fmt_ratio(hi)}]")
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 120)
    console.print(table)
    for line in data.get("headlines", []):
        console.print(f"• {line}")


# -- main ------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    return cli(argv, title="agentbox scale benchmark", doc=__doc__, plans=PLANS, run_plan=run,
               report=write_report, summary=print_summary, default_out=DEFAULT_OUT,
               default_report=DEFAULT_REPORT)


if __name__ == "__main__":
    sys.exit(main())
