"""Benchmark of the core library: each figure beside a baseline measured in the same run.

    .venv/bin/python bench/bench_core.py [--quick] [--out bench/results/core.json]

Machines that run this are noisy (shared CPUs, other containers), so the figures
that matter are ratios against a baseline taken in the same run, on the same
machine, interleaved with the measured thing; absolute times are context only.

What is measured (each with p50/p95/p99, min/max and stdev, raw samples kept):

1. Cold session start: ``AsyncSession().start()`` and its phases
   (``container_start``, ``kernel_ready``, ``total``), the first ``1+1`` and
   ``close()``. Baselines: the engine's bare ``docker run --rm --network none
   IMAGE true`` and an ipykernel started on the host by jupyter_client.
2. Pool acquire: ``SessionManager.create()`` served from a full warm pool,
   against the cold start of (1).
3. A trivial cell (``1+1``) round trip on a warm session, against the same cell
   on the host kernel.
4. A print-heavy cell, a 10,000-row DataFrame display and a matplotlib figure
   (inline PNG), both ways. Target from the issue: the container adds under 5%
   (ratio < 1.05 at p50) to every cell.

Writes the results (machine, command, every sample) as JSON to ``--out`` and a
Markdown report to ``--report`` (docs/benchmarks.md, the front page of the
benchmarks: it opens with an index of all the reports, read from the other
scripts' JSON results). ``--render-only FILE`` rebuilds the report from an
earlier JSON without measuring anything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results" / "core.json"
DEFAULT_REPORT = REPO / "docs" / "benchmarks.md"
PLOT_NAME = "bench-core.png"
SCHEMA = 1

TRIVIAL = "1+1"
PRINT_HEAVY = "for i in range(1000): print(i)"
DATAFRAME = "import pandas as pd, numpy as np; df = pd.DataFrame(np.random.rand(10000, 5)); df"
# Deterministic data: both kernels render the very same 600x400 PNG (inline backend).
MATPLOTLIB = ("import matplotlib.pyplot as plt, numpy as np; fig, ax = plt.subplots(figsize=(6, 4)); "
              "ax.plot(np.arange(1000) % 97); plt.show()")
VERSIONS_PROBE = (
    "import json, sys, platform, IPython, ipykernel, pandas, numpy, matplotlib\n"
    "print(json.dumps({'python': platform.python_version(), 'ipython': IPython.__version__,"
    " 'ipykernel': ipykernel.__version__, 'pandas': pandas.__version__,"
    " 'numpy': numpy.__version__, 'matplotlib': matplotlib.__version__}))"
)
TARGET_RATIO = 1.05  # from the issue: the container adds under 5% over the host kernel
CELL_GROUPS = ("trivial", "heavy")
RESULTS = REPO / "bench" / "results"


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


class BenchError(RuntimeError):
    """A measurement did not do what it should (failed cell, missing output...)."""


# -- statistics ------------------------------------------------------------------------
def percentile(samples: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(samples)
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(samples: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(samples),
        "p50": percentile(samples, 50),
        "p95": percentile(samples, 95),
        "p99": percentile(samples, 99),
        "min": min(samples),
        "max": max(samples),
        "mean": statistics.fmean(samples),
        "stdev": statistics.stdev(samples) if len(samples) > 1 else 0.0,
    }


def ratio_ci(subject: Sequence[float], baseline: Sequence[float], *, rounds: int = 2000,
             seed: int = 12345) -> tuple[float, float]:
    """95% bootstrap interval of median(subject) / median(baseline), resampling each side."""
    rng = random.Random(seed)
    ratios = []
    for _ in range(rounds):
        s = statistics.median(rng.choices(subject, k=len(subject)))
        b = statistics.median(rng.choices(baseline, k=len(baseline)))
        ratios.append(s / b if b > 0 else math.inf)
    return percentile(ratios, 2.5), percentile(ratios, 97.5)


# -- recording -------------------------------------------------------------------------
class Recorder:
    """Samples by key (seconds unless another *unit* is given), with a label and the
    group (table) they belong to."""

    def __init__(self) -> None:
        self.series: dict[str, dict[str, Any]] = {}
        self.comparisons: list[dict[str, Any]] = []

    def define(self, key: str, group: str, label: str, note: str = "", unit: str = "s") -> None:
        self.series[key] = {"group": group, "label": label, "note": note, "unit": unit,
                            "samples": []}

    def add(self, key: str, seconds: float) -> None:
        self.series[key]["samples"].append(seconds)

    def compare(self, group: str, figure: str, subject: str, baseline: str,
                note: str = "") -> None:
        self.comparisons.append({"group": group, "figure": figure, "subject": subject,
                                 "baseline": baseline, "note": note})

    def finish(self) -> None:
        for s in self.series.values():
            if s["samples"]:
                s["stats"] = summarize(s["samples"])
        for c in self.comparisons:
            subj = self.series[c["subject"]]["samples"]
            base = self.series[c["baseline"]]["samples"]
            if not subj or not base:
                continue
            p50s, p50b = percentile(subj, 50), percentile(base, 50)
            c["ratio"] = p50s / p50b
            c["ratio_ci95"] = list(ratio_ci(subj, base))
            c["delta_p50_ms"] = (p50s - p50b) * 1000.0


# -- machine ---------------------------------------------------------------------------
def _meminfo_kib(field_name: str) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return None


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _docker_parent_shares() -> int | None:
    """cpu.shares of the cgroup (v1, cgroupfs driver) all containers sit under."""
    with contextlib.suppress(OSError, ValueError):
        return int(Path("/sys/fs/cgroup/cpu/docker/cpu.shares").read_text())
    return None


def contention_note(machine: dict[str, Any]) -> list[str]:
    """Why a loaded host makes the sandbox side look slower than it is, when it applies."""
    if str(machine.get("docker_cgroup_version")) != "1":
        return []
    shares = machine.get("docker_parent_cpu_shares")
    load = (machine.get("loadavg_at_start") or [0])[0]
    return [f"- On this cgroup v1 host every container sits under the engine's `/docker` cgroup "
            f"(`cpu.shares` {shares or 1024}), which competes for CPU as *one* task beside each "
            "busy host process: when other work loads the machine (load average "
            f"{load:.1f} at the start of this run), all sandboxes together get about one host "
            "process's share, and the ratios against host-side baselines lean against the "
            "sandbox; on a quiet machine this does not apply."]


def git_state() -> dict[str, Any]:
    """The commit measured, and which files of the library differ from it."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              timeout=10, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    dirty = git("status", "--porcelain", "--", "sandbox", "kernel_image")
    return {"commit": git("rev-parse", "HEAD") or None,
            "modified": [line[3:] for line in dirty.splitlines()]}


def machine_info(client: Any, image: str) -> dict[str, Any]:
    version = client.version()
    info = client.info()
    mem_kib = _meminfo_kib("MemTotal")
    img = client.images.get(image)
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_total_mib": round(mem_kib / 1024) if mem_kib else None,
        "memory_available_mib_at_start": (round(m / 1024) if (m := _meminfo_kib("MemAvailable"))
                                          else None),
        "loadavg_at_start": list(os.getloadavg()),
        "docker_version": version.get("Version"),
        "docker_api_version": version.get("ApiVersion"),
        "docker_storage_driver": info.get("Driver"),
        "docker_cgroup_version": info.get("CgroupVersion"),
        "docker_default_runtime": info.get("DefaultRuntime"),
        "docker_runtimes": sorted(info.get("Runtimes") or {}),
        "docker_cgroup_driver": info.get("CgroupDriver"),
        "docker_parent_cpu_shares": _docker_parent_shares(),
        "kernel_version": info.get("KernelVersion"),
        "image": image,
        "image_id": img.id,
        "image_size_mb": round((img.attrs.get("Size") or 0) / 1e6, 1),
    }


# -- the host kernel (baseline) ----------------------------------------------------------
class LocalKernel:
    """An ipykernel on the host, driven by jupyter_client: the baseline for every cell."""

    def __init__(self) -> None:
        self.km: Any = None
        self.kc: Any = None

    async def start(self) -> float:
        """Start and wait until the kernel answers; returns the seconds that took."""
        from jupyter_client.manager import AsyncKernelManager

        t0 = time.perf_counter()
        self.km = AsyncKernelManager(kernel_name="python3")
        # The kernel's own warnings (TCP without encryption...) would break up the progress
        # display; a kernel that fails to start still fails wait_for_ready.
        # Same kernel settings as the image's ipython_kernel_config.py, so the ratio shows
        # what the container adds, not what a different configuration costs.
        await self.km.start_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   extra_arguments=["--HistoryManager.hist_file=:memory:",
                                                    "--IPCompleter.use_jedi=False",
                                                    "--InteractiveShell.colors=NoColor"])
        self.kc = self.km.client()
        self.kc.start_channels()
        await self.kc.wait_for_ready(timeout=30)
        return time.perf_counter() - t0

    async def shutdown(self) -> float:
        t0 = time.perf_counter()
        kc, self.kc = self.kc, None
        km, self.km = self.km, None
        if kc is not None:
            kc.stop_channels()
        if km is not None and km.has_kernel:
            await km.shutdown_kernel(now=True)
        return time.perf_counter() - t0

    async def execute(self, code: str) -> tuple[float, dict[str, Any], list[dict[str, Any]]]:
        """Run *code*; wait for the execute_reply and the 'idle' status. Returns the
        seconds, the reply, and the IOPub messages (collected, not printed)."""
        msgs: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        reply = await self.kc.execute_interactive(code, timeout=60, allow_stdin=False,
                                                  output_hook=msgs.append)
        return time.perf_counter() - t0, reply, msgs


def local_stdout(msgs: list[dict[str, Any]]) -> str:
    return "".join(m["content"].get("text", "") for m in msgs
                   if m["header"]["msg_type"] == "stream" and m["content"].get("name") == "stdout")


def local_result_mimes(msgs: list[dict[str, Any]]) -> list[str]:
    for m in msgs:
        if m["header"]["msg_type"] == "execute_result":
            return sorted(m["content"].get("data", {}))
    return []


def local_display_mimes(msgs: list[dict[str, Any]]) -> list[str]:
    return sorted({mime for m in msgs if m["header"]["msg_type"] == "display_data"
                   for mime in m["content"].get("data", {})})


# -- checks of what a cell produced ----------------------------------------------------------
def check_lib(code: str, result: Any) -> None:
    if result.status != "ok":
        raise BenchError(f"{code!r} in the sandbox ended {result.status}: {result.notes}")
    if code == TRIVIAL and result.text != "2":
        raise BenchError(f"1+1 in the sandbox gave {result.text!r}")
    if code == PRINT_HEAVY and result.stdout.count("\n") != 1000:
        raise BenchError(f"print-heavy cell gave {result.stdout.count(chr(10))} lines, not 1000")
    if code == DATAFRAME and result.result is None:
        raise BenchError("the DataFrame cell in the sandbox displayed nothing")
    if code == MATPLOTLIB and not any(mime == "image/png" for mime, _ in result.images):
        raise BenchError("the matplotlib cell in the sandbox displayed no PNG")


def check_local(code: str, reply: dict[str, Any], msgs: list[dict[str, Any]]) -> None:
    status = reply.get("content", {}).get("status")
    if status != "ok":
        raise BenchError(f"{code!r} on the host kernel ended {status}")
    if code == PRINT_HEAVY and local_stdout(msgs).count("\n") != 1000:
        raise BenchError("print-heavy cell on the host kernel did not print 1000 lines")
    if code in (TRIVIAL, DATAFRAME) and not local_result_mimes(msgs):
        raise BenchError(f"{code!r} on the host kernel displayed nothing")
    if code == MATPLOTLIB and "image/png" not in local_display_mimes(msgs):
        raise BenchError("the matplotlib cell on the host kernel displayed no PNG")


# -- the benchmark ----------------------------------------------------------------------------
class Bench:
    def __init__(self, plan: Plan, console: Any, progress: Any) -> None:
        import docker

        import sandbox

        self.plan = plan
        self.console = console
        self.progress = progress
        self.rec = Recorder()
        self.docker = docker.from_env()
        self.image = sandbox.image_tag()
        self.extra: dict[str, Any] = {"versions": {}, "outputs": {}}

    def _task(self, description: str, total: int) -> Any:
        return self.progress.add_task(description, total=total)

    # 1. cold start -----------------------------------------------------------------------
    async def docker_run_floor(self) -> float:
        """``docker run --rm --network none IMAGE true``: create, start, wait, remove."""
        def run() -> None:
            self.docker.containers.run(self.image, ["true"], entrypoint=[], remove=True,
                                       network_mode="none")

        t0 = time.perf_counter()
        await asyncio.to_thread(run)  # the library drives the engine from a thread, too
        return time.perf_counter() - t0

    async def cold_session(self) -> None:
        from sandbox import AsyncSession

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

    async def bench_cold(self) -> None:
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

        # Warm-up: one of each, unrecorded (page cache, image layers, imports).
        await self.docker_run_floor()
        await self.cold_session()
        await self.local_start()
        for s in r.series.values():
            s["samples"].clear()

        steps: dict[str, Callable[[], Awaitable[Any]]] = {
            "floor": self._floor_step, "lib": self.cold_session, "local": self.local_start}
        orders = [("floor", "lib", "local"), ("lib", "local", "floor"), ("local", "floor", "lib"),
                  ("floor", "local", "lib"), ("lib", "floor", "local"), ("local", "lib", "floor")]
        task = self._task("cold start  (docker run · session · host kernel)", self.plan.cold)
        for i in range(self.plan.cold):
            for name in orders[i % len(orders)]:  # rotate so no side always follows another
                await steps[name]()
            self.progress.advance(task)

    async def _floor_step(self) -> None:
        self.rec.add("floor.docker_run", await self.docker_run_floor())

    # 2. pool acquire ---------------------------------------------------------------------
    async def bench_pool(self) -> None:
        from sandbox import ManagerConfig, SessionManager

        r, g = self.rec, "pool"
        r.define("lib.pool.acquire", g, "pool acquire: await m.create()",
                 "full pool (level 2) before each take")
        r.define("lib.pool.ttfr", g, "pool acquire + first 1+1", "time to first result")
        r.define("lib.pool.refill", g, "pool refill after close (context)",
                 "close → pool back at 2; a cold start in the background")
        r.compare(g, "pool acquire / cold start total", "lib.pool.acquire", "lib.cold.total")
        r.compare(g, "pool time to first result / cold", "lib.pool.ttfr", "lib.cold.ttfr")

        misses = 0
        task = self._task("pool acquire (size 2)", self.plan.pool)
        async with SessionManager(ManagerConfig(pool_size=2)) as m:
            await self._wait_pool(m, 2)
            for _ in range(self.plan.pool):
                t0 = time.perf_counter()
                s = await m.create()
                acquired = time.perf_counter() - t0
                try:
                    result = await s.execute(TRIVIAL)
                    ttfr = time.perf_counter() - t0
                    check_lib(TRIVIAL, result)
                finally:
                    t1 = time.perf_counter()
                    await m.close(s.id)
                if not s.from_pool:
                    misses += 1  # started cold: not a pool figure
                else:
                    r.add("lib.pool.acquire", acquired)
                    r.add("lib.pool.ttfr", ttfr)
                await self._wait_pool(m, 2)
                r.add("lib.pool.refill", time.perf_counter() - t1)
                self.progress.advance(task)
        self.extra["pool_misses"] = misses

    @staticmethod
    async def _wait_pool(m: Any, level: int, timeout: float = 120.0) -> None:
        end = time.monotonic() + timeout
        while m.pool_level < level:
            if time.monotonic() > end:
                raise BenchError(f"the warm pool did not refill to {level} in {timeout:.0f}s "
                                 f"(level {m.pool_level}, last error: {m._pool.last_error})")
            await asyncio.sleep(0.01)

    # 3 + 4. cells ---------------------------------------------------------------------------
    async def bench_cells(self) -> None:
        from sandbox import AsyncSession

        r = self.rec
        cells = [
            ("trivial", TRIVIAL, "1+1", self.plan.trivial, self.plan.warmup_trivial),
            ("print", PRINT_HEAVY, "print 1000 lines", self.plan.heavy, self.plan.warmup_heavy),
            ("dataframe", DATAFRAME, "10,000-row DataFrame display", self.plan.heavy,
             self.plan.warmup_heavy),
            ("figure", MATPLOTLIB, "matplotlib figure (PNG)", self.plan.heavy,
             self.plan.warmup_heavy),
        ]
        for key, _code, label, _n, _w in cells:
            g = "trivial" if key == "trivial" else "heavy"
            r.define(f"lib.rt.{key}", g, f"{label}: sandbox", "await session.execute(...)")
            r.define(f"local.rt.{key}", g, f"{label}: host kernel",
                     "jupyter_client execute_interactive, reply + idle")
            r.compare(g, f"{label}: sandbox / host kernel", f"lib.rt.{key}", f"local.rt.{key}")

        local = LocalKernel()
        async with AsyncSession() as session:
            try:
                await local.start()
                self.extra["versions"]["sandbox_kernel"] = await self._lib_versions(session)
                self.extra["versions"]["host_kernel"] = await self._local_versions(local)
                for key, code, label, n, warmup in cells:
                    task = self._task(f"{label} (sandbox vs host kernel)", 2 * n)
                    for _ in range(warmup):
                        await self._lib_cell(session, code)
                        await self._local_cell(local, code)
                    await self._interleave(session, local, key, code, n, task)
                    self.extra["outputs"][key] = await self._describe_outputs(session, local, code)
            finally:
                await local.shutdown()

    async def _interleave(self, session: Any, local: LocalKernel, key: str, code: str, n: int,
                          task: Any) -> None:
        """Alternate blocks of sandbox and host runs, starting side alternating too."""
        block = min(self.plan.block, n)
        done_lib = done_local = 0
        lib_first = True
        while done_lib < n or done_local < n:
            sides = ("lib", "local") if lib_first else ("local", "lib")
            for side in sides:
                if side == "lib":
                    k = min(block, n - done_lib)
                    for _ in range(k):
                        self.rec.add(f"lib.rt.{key}", await self._lib_cell(session, code))
                        self.progress.advance(task)
                    done_lib += k
                else:
                    k = min(block, n - done_local)
                    for _ in range(k):
                        self.rec.add(f"local.rt.{key}", await self._local_cell(local, code))
                        self.progress.advance(task)
                    done_local += k
            lib_first = not lib_first

    @staticmethod
    async def _lib_cell(session: Any, code: str) -> float:
        t0 = time.perf_counter()
        result = await session.execute(code, timeout=60)
        elapsed = time.perf_counter() - t0
        check_lib(code, result)
        return elapsed

    @staticmethod
    async def _local_cell(local: LocalKernel, code: str) -> float:
        elapsed, reply, msgs = await local.execute(code)
        check_local(code, reply, msgs)
        return elapsed

    @staticmethod
    async def _lib_versions(session: Any) -> dict[str, str]:
        result = await session.execute(VERSIONS_PROBE, timeout=60)
        return json.loads(result.stdout) if result.status == "ok" else {"error": result.status}

    @staticmethod
    async def _local_versions(local: LocalKernel) -> dict[str, str]:
        _, reply, msgs = await local.execute(VERSIONS_PROBE)
        if reply.get("content", {}).get("status") != "ok":
            return {"error": "probe failed"}
        return json.loads(local_stdout(msgs))

    @staticmethod
    async def _describe_outputs(session: Any, local: LocalKernel, code: str) -> dict[str, Any]:
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

    # -- leaks ---------------------------------------------------------------------------------
    def leaked_containers(self) -> list[str]:
        return agentbox_containers(self.docker, mine=True)


def agentbox_containers(client: Any, *, mine: bool, extra: Sequence[str] = ()) -> list[str]:
    """Names of agentbox containers (running or not); *mine*: of this process only (by the
    ``org.agentbox.owner-pid`` label); *extra*: more ``key=value`` label filters."""
    from sandbox._runtime.base import LABEL_APP, LABEL_OWNER_PID

    labels = [f"{LABEL_APP}=agentbox", *extra] + ([f"{LABEL_OWNER_PID}={os.getpid()}"] if mine
                                                   else [])
    return [c.name for c in client.containers.list(all=True, filters={"label": labels})]


@contextlib.contextmanager
def progress_display(console: Any) -> Any:
    """The rich progress display every bench script shows while it measures."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        yield progress


def check_image(client: Any, image: str) -> None:
    try:
        client.images.get(image)
    except Exception as exc:
        raise BenchError(f"kernel image {image} not found ({exc}); run `make image`") from exc


def mark_targets(comparisons: list[dict[str, Any]], groups: Sequence[str]) -> None:
    """The issue's target for cells: the sandbox under 5% over the host kernel at p50."""
    for c in comparisons:
        if c["group"] in groups and "ratio" in c:
            c["target_ratio"] = TARGET_RATIO
            c["target_met"] = c["ratio"] < TARGET_RATIO


# -- the run ------------------------------------------------------------------------------------
async def run(plan: Plan, console: Any) -> dict[str, Any]:
    started = time.perf_counter()
    with progress_display(console) as progress:
        bench = Bench(plan, console, progress)
        check_image(bench.docker, bench.image)
        machine = machine_info(bench.docker, bench.image)
        await bench.bench_cold()
        await bench.bench_pool()
        await bench.bench_cells()
    bench.rec.finish()
    mark_targets(bench.rec.comparisons, CELL_GROUPS)
    machine["loadavg_at_end"] = list(os.getloadavg())
    leaks = bench.leaked_containers()
    import ipykernel
    import jupyter_client

    data: dict[str, Any] = {
        "schema": SCHEMA,
        "benchmark": "core",
        "mode": plan.mode,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "duration_s": round(time.perf_counter() - started, 1),
        "plan": plan.__dict__,
        "git": git_state(),
        "machine": machine,
        "libraries": {"jupyter_client": jupyter_client.__version__,
                      "ipykernel": ipykernel.__version__},
        "versions": bench.extra["versions"],
        "outputs": bench.extra["outputs"],
        "checks": {"pool_misses": bench.extra.get("pool_misses", 0),
                   "leaked_containers": leaks},
        "series": bench.rec.series,
        "comparisons": bench.rec.comparisons,
    }
    data["headlines"] = core_headlines(data)
    return data


# -- reporting ------------------------------------------------------------------------------------
def fmt_ms(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "–"
    ms = seconds * 1000.0
    if ms >= 100:
        return f"{ms:.0f} ms"
    if ms >= 10:
        return f"{ms:.1f} ms"
    if ms >= 1:
        return f"{ms:.2f} ms"
    return f"{ms * 1000:.1f} µs"


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "–"
    if r >= 10:
        return f"{r:.0f}×"
    if r >= 0.1:
        return f"{r:.2f}×"
    if r >= 0.01:
        return f"{r:.3f}×"
    return f"1/{float(f'{1 / r:.3g}'):,.0f}"  # 6.1e-05 -> 1/16,400


def fmt_value(value: float | None, unit: str = "s") -> str:
    """A sample in its series' unit: seconds as ms/µs, MiB, rates."""
    if unit == "s" or value is None or math.isnan(value):
        return fmt_ms(value)
    if unit == "MiB":
        return f"{value:,.1f} MiB" if value < 100 else f"{value:,.0f} MiB"
    if unit == "cells/s":
        return f"{value:,.0f}/s" if value >= 100 else f"{value:,.1f}/s"
    return f"{value:.3g} {unit}"


def fmt_spread(st: dict[str, float], unit: str = "s") -> str:
    return (f"{fmt_value(st['min'], unit)} – {fmt_value(st['max'], unit)} "
            f"(σ {fmt_value(st['stdev'], unit)})")


def series_table(data: dict[str, Any], keys: Sequence[str]) -> list[str]:
    """Markdown rows for *keys*: n, p50/p95/p99, spread and, for each comparison of the
    series, its baseline and ratio (95% bootstrap interval); a series compared more than
    once repeats its row with 〃."""
    series = data["series"]
    baselines = {c["baseline"] for c in data["comparisons"]}
    lines = ["| Figure | n | p50 | p95 | p99 | spread | baseline | baseline p50 | ratio |",
             "|---|--:|--:|--:|--:|---|---|--:|--:|"]
    for key in keys:
        s = series[key]
        st, unit = s["stats"], s.get("unit", "s")
        comps = _comparison_for(data, key) or [None]
        for i, c in enumerate(comps):
            head = (f"{s['label']} | {st['n']} | {fmt_value(st['p50'], unit)} | "
                    f"{fmt_value(st['p95'], unit)} | {fmt_value(st['p99'], unit)} | "
                    f"{fmt_spread(st, unit)}") if i == 0 \
                else f"{s['label']} | 〃 | 〃 | 〃 | 〃 | 〃"
            if c is None or "ratio" not in c:
                role = "*(a baseline)*" if key in baselines else "–"
                lines.append(f"| {head} | {role} | – | – |")
                continue
            b = series[c["baseline"]]
            lo, hi = c["ratio_ci95"]
            lines.append(f"| {head} | {b['label']} | "
                         f"{fmt_value(b['stats']['p50'], b.get('unit', 's'))} | "
                         f"**{fmt_ratio(c['ratio'])}** [{fmt_ratio(lo)}–{fmt_ratio(hi)}] |")
    return lines


GROUPS = [
    ("cold", "1. Cold session start",
     "`AsyncSession().start()` → first `1+1` → `close()`, one fresh session per iteration. "
     "Baselines, interleaved with it in rotating order: the engine's bare "
     "`docker run --rm --network none IMAGE true` (create, start, wait, remove; the floor any "
     "container start pays) and an ipykernel started on the host by jupyter_client "
     "(`start_kernel` + `wait_for_ready`)."),
    ("pool", "2. Pool acquire",
     "`SessionManager(ManagerConfig(pool_size=2))`; before each take the pool is back at 2, then "
     "`await m.create()` is timed, a `1+1` run, and the session closed with `m.close(id)`. "
     "Baseline: the cold start of table 1, same run."),
    ("trivial", "3. Trivial cell round trip (`1+1`)",
     "One warm session and one warm host kernel, alternating in blocks; time from the call to "
     "the result (execute_reply and the kernel's `idle`)."),
    ("heavy", "4. Output-heavy cells",
     "`for i in range(1000): print(i)`, "
     "`df = pd.DataFrame(np.random.rand(10000, 5)); df` (display of a 10,000-row frame) and a "
     "600×400 matplotlib line plot shown inline (`plt.show()`, one ~27 kB PNG; same data on "
     "both sides), sandbox vs host kernel, alternating in blocks, after warm-up runs (pandas "
     "and matplotlib imported)."),
]

REPORTS = [  # (json name, report file, title, script, what it measures)
    ("core.json", "benchmarks.md", "Core library", "bench/bench_core.py",
     "cold start and its phases, pool acquire, cell round trips (`1+1`, 1,000-line print, "
     "10,000-row DataFrame, matplotlib figure) against `docker run IMAGE true` and a host "
     "ipykernel"),
    ("api.json", "benchmarks-api.md", "HTTP API", "bench/bench_api.py",
     "what `POST /v1/sessions` and `POST .../execute` (JSON and SSE) add over the library call"),
    ("scale.json", "benchmarks-scale.md", "Scale, failures, isolation", "bench/bench_scale.py",
     "cells per second at 1–64 concurrent sessions, memory per idle session and the most this "
     "machine holds, start and round trip with many live sessions, timeout recovery and "
     "kernel-death detection, gVisor (runsc) against runc"),
    ("tuning.json", "benchmarks-tuning.md", "Host-side tuning", "bench/bench_tuning.py",
     "a profile of the host's share of a `1+1` round trip, and the library's message pump "
     "before and after the tuning it led to"),
]


def core_headlines(data: dict[str, Any]) -> list[str]:
    """One-line findings of a core run, for the index and the README."""
    comps = {c["figure"]: c for c in data["comparisons"] if "ratio" in c}
    series = data["series"]
    out = []
    cold, host = comps.get("cold start total / docker-run floor"), comps.get(
        "cold start total / host kernel start")
    if cold:
        out.append(f"cold start {fmt_ms(series['lib.cold.total']['stats']['p50'])} at p50 "
                   f"({fmt_ratio(cold['ratio'])} `docker run IMAGE true`"
                   + (f", {fmt_ratio(host['ratio'])} a host ipykernel start" if host else "")
                   + ")")
    if "lib.pool.acquire" in series and series["lib.pool.acquire"].get("stats"):
        out.append(f"pool acquire {fmt_ms(series['lib.pool.acquire']['stats']['p50'])}")
    trivial = comps.get("1+1: sandbox / host kernel")
    if trivial:
        out.append(f"`1+1` round trip {fmt_ms(series['lib.rt.trivial']['stats']['p50'])} "
                   f"({fmt_ratio(trivial['ratio'])} the host kernel)")
    targets = [c for c in data["comparisons"] if "target_met" in c]
    if targets:
        met = sum(c["target_met"] for c in targets)
        out.append(f"container under +5% over the host kernel: {met} of {len(targets)} cells")
    return out


def render_index(core: dict[str, Any], results: Path = RESULTS) -> list[str]:
    """The front page's index: the reports, how to reproduce them, on what machine.
    The other reports' dates and headlines come from their JSON results, when present."""
    m = core["machine"]
    runs: dict[str, dict[str, Any] | None] = {}
    for name, *_ in REPORTS:
        runs[name] = core if name == "core.json" else None
        if runs[name] is None and (results / name).exists():
            with contextlib.suppress(ValueError, OSError):
                runs[name] = json.loads((results / name).read_text())
    done = [d for d in runs.values() if d is not None]
    took = (f" The runs below took {sum(d['duration_s'] for d in done) / 60:.1f} minutes "
            f"together ({', '.join(sorted({d['mode'] for d in done}))} mode)."
            if len(done) == len(REPORTS) else "")
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by bench/bench_core.py (the index reads bench/results/*.json); edit "
        "the scripts, not this file. -->",
        "",
        f"{len(REPORTS)} reports, one script each. Every figure is a ratio against a baseline "
        "measured in the same run, interleaved with it: these machines are shared and noisy, so "
        "**read the ratios**; absolute times are context. Reproduce them all from the repository "
        "root with `make bench` (each script alone: the command in the table; `--quick` for a "
        "run of about a minute, `--render-only FILE` to rebuild a report from its JSON)."
        + took,
        "",
        "```sh",
        "make bench",
        "```",
        "",
        "| Report | Measures | Command | Last run | Headlines |",
        "|---|---|---|---|---|",
    ]
    for name, report, title, script, what in REPORTS:
        data = runs[name]
        link = f"[{title}](#core-library)" if report == "benchmarks.md" else f"[{title}]({report})"
        if data is None:
            lines.append(f"| {link} | {what} | `.venv/bin/python {script}` | not run yet | – |")
            continue
        heads = core_headlines(data) if name == "core.json" else data.get("headlines", [])
        lines.append(f"| {link} | {what} | `.venv/bin/python {script}` | {data['date'][:16]}, "
                     f"{data['mode']}, {data['duration_s']:.0f} s, load "
                     f"{_load1(data['machine'].get('loadavg_at_start'))} → "
                     f"{_load1(data['machine'].get('loadavg_at_end'))} | "
                     f"{'; '.join(heads) or '–'} |")
    runtimes = ", ".join(m.get("docker_runtimes") or [m["docker_default_runtime"]])
    lines += [
        "",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} logical CPUs, {m['memory_total_mib']} MiB; "
        f"{m['platform']}; Docker {m['docker_version']} ({m['docker_storage_driver']}, cgroup "
        f"v{m['docker_cgroup_version']}, runtimes: {runtimes}); image `{m['image']}`. Load is "
        "the 1-minute load average at the start and end of each run: other work shared the "
        "machine.",
        "",
    ]
    return lines


def _comparison_for(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return [c for c in data["comparisons"] if c["subject"] == key]


def render_markdown(data: dict[str, Any], plot: str | None) -> str:
    m = data["machine"]
    series = data["series"]
    lines = [
        *render_index(data),
        "## Core library",
        "",
        f"Measured {data['date']} in **{data['mode']}** mode ({data['duration_s']:.0f} s). "
        "Every figure stands beside a baseline measured in the same run on the same machine, "
        "interleaved with it, because these machines are noisy: **read the ratios**; the "
        "absolute times are context and will differ elsewhere.",
        "",
        "Reproduce from the repository root:",
        "",
        "```sh",
        ".venv/bin/python bench/bench_core.py" + (" --quick" if data["mode"] == "quick" else ""),
        "```",
        "",
        f"This run: `{data['command']}`; raw samples in `{data.get('out', 'bench/results/core.json')}`.",
        "",
        "What the HTTP API adds on top of these library calls is measured by `bench/bench_api.py`: "
        "see [benchmarks-api.md](benchmarks-api.md); throughput, memory, failure paths and gVisor "
        "by `bench/bench_scale.py`: see [benchmarks-scale.md](benchmarks-scale.md).",
        "",
        "Columns: percentiles are linear-interpolated over the *n* samples (with small *n*, p99 "
        "is close to the maximum); spread is min – max and the standard deviation; ratio is "
        "subject p50 / baseline p50 with a 95% bootstrap interval in brackets.",
        "",
    ]
    targets = [c for c in data["comparisons"] if "target_met" in c]
    if targets:
        lines += ["### Target", "",
                  f"From the issue: the container adds under {(TARGET_RATIO - 1) * 100:.0f}% "
                  f"to a cell's round trip over the same cell on a host kernel (ratio < "
                  f"{TARGET_RATIO:g} at p50).", "",
                  "| Cell | sandbox p50 | host kernel p50 | ratio [95% CI] | target met |",
                  "|---|--:|--:|--:|---|"]
        for c in targets:
            lo, hi = c["ratio_ci95"]
            verdict = "**yes**" if c["target_met"] else "**no**"
            if c["target_met"] and hi >= TARGET_RATIO:
                verdict += " (the interval reaches the target)"
            lines.append(f"| {c['figure'].split(':')[0]} | "
                         f"{fmt_ms(series[c['subject']]['stats']['p50'])} | "
                         f"{fmt_ms(series[c['baseline']]['stats']['p50'])} | "
                         f"{c['ratio']:.3f}× [{lo:.2f}×–{hi:.2f}×] | {verdict} |")
        lines += ["", *contention_note(m), ""]
    for group, title, text in GROUPS:
        keys = [k for k, s in series.items() if s["group"] == group and s.get("stats")]
        if not keys:
            continue
        lines += [f"### {title}", "", text, "", *series_table(data, keys), ""]
        deltas = [c for c in data["comparisons"] if c["group"] == group
                  and c["group"] in CELL_GROUPS and "delta_p50_ms" in c]
        for c in deltas:
            d = c["delta_p50_ms"]
            lines.append(f"- {c['figure']}: at p50 the sandbox is **{abs(d):.2f} ms "
                         f"{'slower' if d >= 0 else 'faster'}** than the host kernel.")
        if group == "cold":
            lines.append("- Phases are `session.phases`: `container_start` is the create + start "
                         "of the hardened container (read-only root, no network, limits), "
                         "`kernel_ready` from there until the kernel answers, `total` both plus "
                         "setup. The docker-run floor also includes waiting for `true` to exit "
                         "and removing the container; the cold start does not include `close()`.")
        if group == "pool":
            misses = data["checks"].get("pool_misses", 0)
            lines.append(f"- Takes that found the pool empty and started cold: {misses} "
                         "(excluded from the pool rows).")
        if group == "heavy":
            outs = data.get("outputs", {})
            for key in ("print", "dataframe", "figure"):
                o = outs.get(key)
                if o:
                    box, host = o["sandbox"], o["host"]
                    shown = (f"display MIME types {box.get('display_mimes') or '–'} / "
                             f"{host.get('display_mimes') or '–'}" if key == "figure" else
                             f"result MIME types {box['result_mimes'] or '–'} / "
                             f"{host['result_mimes'] or '–'}")
                    lines.append(f"- `{key}` output, sandbox / host: {shown}; stdout bytes "
                                 f"{box['stdout_bytes']} / {host['stdout_bytes']}.")
        if group in CELL_GROUPS:
            lines.append("- The sandbox kernel runs under the session defaults (1 CPU, 1 GiB, "
                         "hardened container); the host kernel has the whole machine.")
        if group in ("cold", *CELL_GROUPS):
            lines += _version_notes(data)
        lines.append("")
    if plot:
        lines += [f"![p50 of each figure beside its baseline]({plot})", ""]
    v = data.get("versions", {})
    lines += [
        "### Machine",
        "",
        "| | |",
        "|---|---|",
        f"| platform | {m['platform']} |",
        f"| CPU | {m['cpu_model']}, {m['cpu_count']} logical CPUs "
        f"({m.get('cpu_affinity')} usable by this process) |",
        f"| memory | {m['memory_total_mib']} MiB total |",
        f"| load average (1/5/15 min) | start {_load(m.get('loadavg_at_start'))}, "
        f"end {_load(m.get('loadavg_at_end'))} |",
        f"| Docker | {m['docker_version']} (API {m['docker_api_version']}), storage "
        f"{m['docker_storage_driver']}, cgroup v{m['docker_cgroup_version']}, runtime "
        f"{m['docker_default_runtime']} |",
        f"| kernel image | `{m['image']}` ({m['image_size_mb']} MB) |",
        f"| host Python | {m['python']}; jupyter_client {data['libraries']['jupyter_client']}, "
        f"ipykernel {data['libraries']['ipykernel']} |",
    ]
    for side, label in (("sandbox_kernel", "sandbox kernel"), ("host_kernel", "host kernel")):
        if v.get(side):
            lines.append(f"| {label} | " + ", ".join(f"{k} {val}" for k, val in v[side].items())
                         + " |")
    git = data.get("git") or {}
    if git.get("commit"):
        mod = git.get("modified") or []
        lines.append(f"| code | commit `{git['commit'][:12]}`"
                     + (f", with uncommitted changes in {', '.join(f'`{p}`' for p in mod)}"
                        if mod else "") + " |")
    leaks = data["checks"].get("leaked_containers", [])
    lines += ["", f"Containers left behind by the run: {len(leaks)}"
              + (f" ({', '.join(leaks)})" if leaks else "") + ".", ""]
    return "\n".join(lines)


def _version_notes(data: dict[str, Any]) -> list[str]:
    """Say so when the two kernels are not the same software: then a ratio compares both
    the sandbox and the kernel versions."""
    v = data.get("versions", {})
    box, host = v.get("sandbox_kernel") or {}, v.get("host_kernel") or {}
    differ = [f"{k} {box[k]} (sandbox) vs {host[k]} (host)" for k in ("ipykernel", "ipython")
              if k in box and k in host and box[k] != host[k]]
    if not differ:
        return []
    return ["- **The two kernels are not the same software:** " + "; ".join(differ) + ". The "
            "ratio measures the sandbox *and* that version difference, not the sandbox alone."]


def _load(values: list[float] | None) -> str:
    return " / ".join(f"{x:.2f}" for x in values) if values else "–"


def _load1(values: list[float] | None) -> str:
    return f"{values[0]:.1f}" if values else "–"


def make_plot(data: dict[str, Any], path: Path) -> bool:
    """A log-scale bar chart of p50 subject vs baseline; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    comps = [c for c in data["comparisons"] if "ratio" in c]
    if not comps:
        return False
    names = [c["figure"] for c in comps]
    subj = [data["series"][c["subject"]]["stats"]["p50"] * 1000 for c in comps]
    base = [data["series"][c["baseline"]]["stats"]["p50"] * 1000 for c in comps]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(comps) + 1.5))
    ys = range(len(comps))
    ax.barh([y + 0.2 for y in ys], subj, height=0.4, label="measured (p50)")
    ax.barh([y - 0.2 for y in ys], base, height=0.4, label="baseline (p50)")
    ax.set_yticks(list(ys), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("milliseconds (log scale)")
    ax.set_title(f"agentbox core benchmark, {data['mode']} mode, {data['date'][:10]}")
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def write_markdown(data: dict[str, Any], report: Path, console: Any, *,
                   render: Callable[[dict[str, Any], str | None], str],
                   plot: Callable[[dict[str, Any], Path], bool], plot_name: str) -> None:
    """The plot (optional: skipped with a note when it fails) beside *report*, then the
    Markdown *render* makes of *data*."""
    shown = None
    try:
        if plot(data, report.parent / plot_name):
            shown = plot_name
        else:
            console.print("[dim]matplotlib not available: no plot[/dim]")
    except Exception as exc:  # a plot is optional; the report is not
        console.print(f"[yellow]plot skipped: {exc}[/yellow]")
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(render(data, shown))
    console.print(f"report: {report}")



def save_figure(fig: Any, path: Path, dpi: int = 110) -> bool:
    """Lay out, write and close a matplotlib figure (shared by the bench scripts)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return True

def write_report(data: dict[str, Any], report: Path, console: Any) -> None:
    write_markdown(data, report, console, render=render_markdown, plot=make_plot,
                   plot_name=PLOT_NAME)


def print_summary(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"agentbox core benchmark ({data['mode']}, {data['duration_s']:.0f} s)")
    for col, justify in (("figure", "left"), ("p50", "right"), ("p95", "right"),
                         ("baseline p50", "right"), ("ratio [95% CI]", "right"),
                         ("Δ p50", "right"), ("target <5%", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for c in data["comparisons"]:
        if "ratio" not in c:
            continue
        st = data["series"][c["subject"]]["stats"]
        b = data["series"][c["baseline"]]["stats"]
        lo, hi = c["ratio_ci95"]
        target = ("" if "target_met" not in c else
                  "[green]met[/green]" if c["target_met"] else "[red]not met[/red]")
        table.add_row(c["figure"], fmt_ms(st["p50"]), fmt_ms(st["p95"]), fmt_ms(b["p50"]),
                      f"{fmt_ratio(c['ratio'])} [{fmt_ratio(lo)}–{fmt_ratio(hi)}]",
                      f"{c['delta_p50_ms']:+.1f} ms", target)
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 120)  # piped: do not squeeze to 80 columns
    console.print(table)


# -- main -------------------------------------------------------------------------------------------
def cli(argv: Sequence[str] | None, *, title: str, doc: str | None, plans: dict[str, Any],
        run_plan: Callable[[Any, Any], Awaitable[dict[str, Any]]],
        report: Callable[[dict[str, Any], Path, Any], None],
        summary: Callable[[dict[str, Any]], None], default_out: Path,
        default_report: Path) -> int:
    """The command line shared by the bench scripts: measure (or --render-only), write
    the JSON and the Markdown report, print a summary, fail on leaked containers."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)
    parser.add_argument("--quick", action="store_true",
                        help="few repetitions (about a minute) instead of the full run")
    parser.add_argument("--out", type=Path, default=default_out,
                        help=f"JSON results (default: {default_out.relative_to(REPO)})")
    parser.add_argument("--report", type=Path, default=default_report,
                        help=f"Markdown report (default: {default_report.relative_to(REPO)})")
    parser.add_argument("--no-report", action="store_true", help="write the JSON only")
    parser.add_argument("--render-only", type=Path, metavar="JSON",
                        help="measure nothing: rebuild the report from an earlier JSON")
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.logging import RichHandler

    console = Console(stderr=True)
    logging.basicConfig(level=logging.WARNING, handlers=[RichHandler(console=console)],
                        format="%(message)s")

    if args.render_only:
        data = json.loads(args.render_only.read_text())
        report(data, args.report, console)
        summary(data)
        return 0

    plan = plans["quick" if args.quick else "full"]
    console.print(f"[bold]{title}[/bold] ({plan.mode} mode)")
    try:
        data = asyncio.run(run_plan(plan, console))  # type: ignore[arg-type]
    except BenchError as exc:
        console.print(f"[red]benchmark failed:[/red] {exc}")
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; sessions were closed[/yellow]")
        return 130

    out = args.out.resolve()
    data["out"] = str(out.relative_to(REPO)) if out.is_relative_to(REPO) else str(out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    console.print(f"results: {args.out}")
    if not args.no_report:
        report(data, args.report, console)
    summary(data)
    leaks = data["checks"]["leaked_containers"]
    if leaks:
        console.print(f"[red]containers left behind: {', '.join(leaks)}[/red]")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli(argv, title="agentbox core benchmark", doc=__doc__, plans=PLANS, run_plan=run,
               report=write_report, summary=print_summary, default_out=DEFAULT_OUT,
               default_report=DEFAULT_REPORT)


if __name__ == "__main__":
    sys.exit(main())
