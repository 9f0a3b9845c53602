"""Host-side tuning: where the host's time goes in ``await session.execute("1+1")``, and
what the library's own message pump saves over jupyter_client's.

    .venv/bin/python bench/bench_tuning.py [--quick] [--out bench/results/tuning.json]

1. A profile. cProfile (on the thread's CPU clock, so waiting in epoll does not count)
   around a loop of ``1+1`` on one warm session. Everything the library does for a
   cell runs in the calling thread's asyncio loop (ZMQ's own I/O thread is C++ and is
   not profiled), so the profile is the host's whole Python share of a round trip:
   CPU time per cell grouped by area, and the functions with the most time of their own.

2. Before/after. What the first profiles showed, and the library now avoids
   (``sandbox._kernel``: ``KernelConnection._pump`` and ``deserialize``):

   - jupyter_client parses every message's ``header.date`` and ``parent_header.date``
     with dateutil (``jsonutil.extract_dates``), and keeps a history of signatures,
     although the host never reads the dates and the box can sign what it likes;
   - ``get_*_msg()`` awaits ``socket.poll()`` and then ``recv_multipart()``: two pyzmq
     futures per message where one does.

   *Before* is a warm session whose pumps read through jupyter_client's
   ``get_*_msg()`` and ``Session.deserialize`` (the library's pump until this change,
   kept here as :func:`legacy_pump`); *after* is a warm session as the library makes
   it. Both run in this process, in interleaved blocks of cells, round after round:
   wall time and this process's CPU time per cell, and their ratio after / before.

Writes JSON (``--out``) and ``docs/benchmarks-tuning.md`` (``--report``).
"""

from __future__ import annotations

import cProfile
import datetime as dt
import io
import os
import pstats
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import (
    REPO,
    TRIVIAL,
    agentbox_containers,
    check_lib,
    cli,
    git_state,
    ratio_ci,
    save_figure,
)

DEFAULT_OUT = REPO / "bench" / "results" / "tuning.json"
DEFAULT_REPORT = REPO / "docs" / "benchmarks-tuning.md"
PLOT_NAME = "bench-tuning.png"


@dataclass(frozen=True)
class Plan:
    mode: str
    cells: int  # profiled cells (and as many timed without the profiler)
    rounds: int  # before/after rounds
    block: int  # cells per side per round
    top: int = 25


PLANS = {
    "quick": Plan("quick", cells=200, rounds=4, block=25),
    "full": Plan("full", cells=600, rounds=8, block=100),
}

# (area, substrings of the code's file path or name), first match wins.
AREAS = [
    ("dateutil / date parsing (jupyter_client.jsonutil)", ("dateutil", "jsonutil", "_strptime")),
    ("jupyter_client session: (de)serialise, sign, msg", ("jupyter_client/session",)),
    ("jupyter_client other", ("jupyter_client",)),
    ("json", ("/json/", "_json")),
    ("hmac / hashlib", ("hmac", "hashlib", "_hashlib")),
    ("uuid / secrets", ("uuid", "secrets", "random")),
    ("zmq (pyzmq, asyncio sockets)", ("zmq",)),
    ("asyncio (loop, tasks, queues, timeouts)", ("asyncio", "selectors", "select.epoll")),
    ("sandbox._outputs", ("sandbox/_outputs",)),
    ("sandbox._session", ("sandbox/_session",)),
    ("sandbox._kernel", ("sandbox/_kernel",)),
    ("sandbox._models", ("sandbox/_models",)),
    ("traitlets", ("traitlets",)),
    ("datetime", ("datetime",)),
]


def area_of(filename: str, func: str) -> str:
    where = f"{filename}:{func}"
    for area, needles in AREAS:
        if any(n in where for n in needles):
            return area
    return "other (builtins, copy, typing...)"


async def measure(cells: int) -> tuple[dict[str, float], pstats.Stats]:
    from sandbox import AsyncSession

    async with AsyncSession() as session:
        for _ in range(50):
            check_lib(TRIVIAL, await session.execute(TRIVIAL))
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(cells):
            check_lib(TRIVIAL, await session.execute(TRIVIAL))
        plain = {"wall_per_cell": (time.perf_counter() - wall0) / cells,
                 "cpu_per_cell": (time.process_time() - cpu0) / cells}
        # The main thread's CPU clock: time spent waiting in epoll is not counted, so the
        # profile is where the CPU goes, not where the wall time is spent waiting.
        profiler = cProfile.Profile(time.thread_time)
        profiler.enable()
        for _ in range(cells):
            await session.execute(TRIVIAL)
        profiler.disable()
    return plain, pstats.Stats(profiler)


def report(plain: dict[str, float], stats: pstats.Stats, cells: int, top: int) -> str:
    raw = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())
    areas: dict[str, float] = {}
    for (filename, _line, func), (_cc, _nc, tt, _ct, _callers) in raw.items():
        key = area_of(filename, func)
        areas[key] = areas.get(key, 0.0) + tt
    out = io.StringIO()
    w = out.write
    w(f"cells: {cells} x `1+1` on one warm session\n")
    w(f"without the profiler: wall {plain['wall_per_cell'] * 1e3:.2f} ms/cell, this process's CPU "
      f"{plain['cpu_per_cell'] * 1e3:.2f} ms/cell "
      f"({plain['cpu_per_cell'] / plain['wall_per_cell']:.0%} of the wall time)\n")
    w(f"under cProfile (main thread's CPU clock): {total / cells * 1e6:.0f} µs/cell "
      "(the profiler inflates call-heavy code: read the shares)\n\n")
    w("own time per cell, by area:\n")
    for key, tt in sorted(areas.items(), key=lambda kv: -kv[1]):
        w(f"  {tt / cells * 1e6:8.1f} µs  {tt / total:6.1%}  {key}\n")
    w(f"\ntop {top} functions by own time (µs per cell, calls per cell):\n")
    rows = sorted(raw.items(), key=lambda kv: -kv[1][2])[:top]
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in rows:
        short = filename.replace(str(REPO) + "/", "")
        if "site-packages/" in short:
            short = short.split("site-packages/", 1)[1]
        w(f"  {tt / cells * 1e6:8.1f}  (cum {ct / cells * 1e6:8.1f})  {nc / cells:6.1f}x  "
          f"{short}:{line}({func})\n")
    w("\ncumulative, the library's and jupyter_client's entry points (µs per cell):\n")
    for (filename, line, func), (_cc, nc, _tt, ct, _callers) in sorted(
            raw.items(), key=lambda kv: -kv[1][3]):
        if ("sandbox/" in filename or "jupyter_client/session" in filename
                or "jsonutil" in filename) and ct / cells > 20e-6:
            short = filename.replace(str(REPO) + "/", "").split("site-packages/")[-1]
            w(f"  {ct / cells * 1e6:8.1f}  {nc / cells:6.1f}x  {short}:{line}({func})\n")
    return out.getvalue()


async def legacy_pump(self: Any, channel: str) -> None:
    """*Before*: the library's pump until the tuning, through jupyter_client's
    ``get_*_msg()`` (a poll, then a recv) and ``Session.deserialize`` (dates parsed,
    signatures remembered); routing by ``KernelConnection.deliver``, as the library's."""
    import zmq

    getter = {"iopub": self.client.get_iopub_msg, "shell": self.client.get_shell_msg,
              "control": self.client.get_control_msg}[channel]
    while True:
        try:
            msg = await getter()
        except zmq.ZMQError:
            return
        except Exception:
            self.rejected += 1
            continue
        self.deliver(channel, msg)


async def before_after(plan: Plan) -> dict[str, dict[str, list[float]]]:
    """Wall and CPU (this process, all threads) per cell, per block, for both pumps."""
    from sandbox import AsyncSession
    from sandbox._kernel import KernelConnection

    tuned_pump = KernelConnection._pump
    before, after = AsyncSession(), AsyncSession()
    try:
        KernelConnection._pump = legacy_pump  # type: ignore[method-assign]
        try:
            await before.start()  # its pumps are created now, with the legacy code
        finally:
            KernelConnection._pump = tuned_pump  # type: ignore[method-assign]
        await after.start()
        sessions = {"before": before, "after": after}
        for session in sessions.values():
            for _ in range(50):
                check_lib(TRIVIAL, await session.execute(TRIVIAL))
        samples: dict[str, dict[str, list[float]]] = {
            name: {"wall": [], "cpu": []} for name in sessions}
        for rnd in range(plan.rounds):
            for name in (("before", "after") if rnd % 2 == 0 else ("after", "before")):
                session = sessions[name]
                wall0, cpu0 = time.perf_counter(), time.process_time()
                for _ in range(plan.block):
                    check_lib(TRIVIAL, await session.execute(TRIVIAL))
                samples[name]["wall"].append((time.perf_counter() - wall0) / plan.block)
                samples[name]["cpu"].append((time.process_time() - cpu0) / plan.block)
    finally:
        await before.close()
        await after.close()
    return samples


async def run(plan: Plan, console: Any) -> dict[str, Any]:
    from sandbox._runtime.engine import connect

    client = connect()
    started, t0 = dt.datetime.now(dt.UTC), time.monotonic()
    load0 = list(os.getloadavg())
    try:
        console.print(f"profiling {plan.cells} cells of `1+1`...")
        plain, stats = await measure(plan.cells)
        profile = report(plain, stats, plan.cells, plan.top)
        console.print(f"before/after: {plan.rounds} rounds of {plan.block} cells each side...")
        samples = await before_after(plan)
        leaks = agentbox_containers(client, mine=True)
    finally:
        client.close()
    comparisons = {}
    for kind in ("wall", "cpu"):
        b, a = samples["before"][kind], samples["after"][kind]
        comparisons[kind] = {"before_ms": statistics.median(b) * 1e3,
                             "after_ms": statistics.median(a) * 1e3,
                             "ratio": statistics.median(a) / statistics.median(b),
                             "ratio_ci95": list(ratio_ci(a, b))}
    cpu = comparisons["cpu"]
    headlines = [f"host CPU per `1+1` {cpu['before_ms']:.2f} → {cpu['after_ms']:.2f} ms "
                 f"({cpu['ratio']:.2f}× before) with the library's own message pump",
                 f"wall {comparisons['wall']['ratio']:.2f}× before"]
    return {
        "benchmark": "tuning", "mode": plan.mode, "plan": plan.__dict__,
        "date": started.isoformat(timespec="seconds"),
        "duration_s": time.monotonic() - t0,
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": {"loadavg_at_start": load0, "loadavg_at_end": list(os.getloadavg()),
                    "cpu_count": os.cpu_count()},
        "git": git_state(), "plain": plain, "profile": profile, "samples": samples,
        "comparisons": comparisons, "headlines": headlines,
        "checks": {"leaked_containers": leaks},
    }


def make_plot(data: dict[str, Any], path: Path) -> bool:
    """Each round's host CPU and wall time per cell, before and after."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, (kind, label) in zip(axes, (("cpu", "host CPU per cell (ms)"),
                                        ("wall", "round trip per cell (ms)")), strict=True):
        for x, side in enumerate(("before", "after")):
            values = [v * 1e3 for v in data["samples"][side][kind]]
            ax.scatter([x] * len(values), values, alpha=0.6, label=side)
            ax.hlines(statistics.median(values), x - 0.25, x + 0.25, color="black")
        ax.set_xticks([0, 1], ["before\n(jupyter_client get_msg)", "after\n(library pump)"])
        ax.set_xlim(-0.6, 1.6)
        ax.set_ylim(bottom=0)
        ax.set_ylabel(label)
    fig.suptitle(f"`1+1` per round of {data['plan']['block']} cells, {data['mode']} mode, "
                 f"{data['date'][:10]} (bar: median)", fontsize=9)
    return save_figure(fig, path)


def write_report(data: dict[str, Any], path: Path, console: Any) -> None:
    c, plan = data["comparisons"], data["plan"]
    lines = [
        "# Host-side tuning: before and after",
        "",
        "<!-- Generated by bench/bench_tuning.py; edit the script, not this file. -->",
        "",
        f"Measured {data['date']} in **{data['mode']}** mode ({data['duration_s']:.0f} s), "
        f"load average {data['machine']['loadavg_at_start'][0]:.1f} → "
        f"{data['machine']['loadavg_at_end'][0]:.1f}. Reproduce from the repository root:",
        "",
        "```sh",
        ".venv/bin/python bench/bench_tuning.py",
        "```",
        "",
        "A profile of the host's share of a `1+1` round trip showed two costs the host "
        "paid on every kernel message for nothing: jupyter_client parsing the ISO dates "
        "of each header and parent header with dateutil (and remembering every "
        "signature to refuse replays, pointless when the box holds the key), and reading "
        "each message with a `poll()` future and then a `recv_multipart()` future. The "
        "library now reads with one `recv_multipart()` and deserialises with "
        "`sandbox._kernel.deserialize` (signature checked, dates left as strings).",
        "",
        f"*Before* is a warm session whose pumps use jupyter_client's `get_*_msg()` "
        f"(the library's code until this change); *after* is a session as the library "
        f"makes it. Same process, same kernel image, {plan['rounds']} interleaved rounds of "
        f"{plan['block']} cells per side; medians over the rounds, ratio after / before "
        "with a 95% bootstrap interval.",
        "",
        "| per `1+1` cell | before | after | after / before [95% CI] |",
        "|---|--:|--:|--:|",
    ]
    for kind, label in (("cpu", "host CPU (this process, all threads)"),
                        ("wall", "wall time (round trip)")):
        k = c[kind]
        lo, hi = k["ratio_ci95"]
        lines.append(f"| {label} | {k['before_ms']:.3f} ms | {k['after_ms']:.3f} ms | "
                     f"**{k['ratio']:.2f}×** [{lo:.2f}×–{hi:.2f}×] |")
    lines += [
        "",
        "- The wall time is dominated by the kernel and the trip through ZMQ; what the "
        "host saves in CPU shows there only when the host is the bottleneck (many "
        "sessions in one process: see the throughput figures in "
        "[benchmarks-scale.md](benchmarks-scale.md)).",
        "- Other host work the profile shows is left alone: asyncio's own scheduling, "
        "pyzmq's futures, HMAC signing (needed), and the per-session ZMQ context "
        "(two I/O threads per session; one shared context would save threads, not time "
        "per cell).",
        "",
        *([f"![host CPU and round trip per cell, before and after]({PLOT_NAME})", ""]
          if make_plot(data, path.parent / PLOT_NAME) else []),
        "## Profile of the library as it is now",
        "",
        "```text",
        data["profile"].rstrip(),
        "```",
        "",
    ]
    path.write_text("\n".join(lines))
    console.print(f"report: {path}")


def print_summary(data: dict[str, Any]) -> None:
    for line in data["headlines"]:
        print(line)


def main(argv: list[str] | None = None) -> int:
    return cli(argv, title="agentbox host-side tuning", doc=__doc__, plans=PLANS, run_plan=run,
               report=write_report, summary=print_summary, default_out=DEFAULT_OUT,
               default_report=DEFAULT_REPORT)


if __name__ == "__main__":
    sys.exit(main())
