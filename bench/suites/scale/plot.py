"""The scale suite's plot: throughput, growth with live sessions, memory, failure paths."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import plot as plots

P50 = Callable[[str], float | None]

MEMORY_BARS = (
    ("host ipykernel RSS", "mem.local.rss"), ("idle session: host", "mem.idle.host"),
    ("idle session: cgroup anon", "mem.idle.anon"), ("idle session: shim PSS", "mem.idle.shim"),
    ("pooled kernel: host", "mem.pool.host"), ("runc idle: host", "iso.runc.mem"),
    ("runsc idle: host", "iso.runsc.mem"))
TIME_BARS = (
    ("timeout → usable: interrupt", "fail.interrupt.overshoot"),
    ("timeout → usable: restart", "fail.restart.overshoot"),
    ("1 s cell ending by itself: overshoot", "fail.natural.overshoot"),
    ("os._exit → died", "fail.died.detect"), ("docker kill → dead", "fail.kill.detect"),
    ("1+1 after death", "fail.died.next"), ("1+1 after docker kill", "fail.kill.next"),
    ("cold start runc", "iso.runc.cold"), ("cold start runsc", "iso.runsc.cold"),
    ("1+1 runc", "iso.runc.rt"), ("1+1 runsc", "iso.runsc.rt"))


def _throughput(a: Any, data: dict[str, Any], p50: P50) -> None:
    s = data["series"]
    levels = [n for n in data["plan"]["concurrency"] if p50(f"tput.{n}") is not None]
    if not levels:
        return
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


def _growth(b: Any, data: dict[str, Any], p50: P50) -> None:
    live = sorted(data["plan"]["live_levels"])
    cold0, rt0 = p50("live.0.cold"), p50("live.0.rt")
    if not (cold0 and rt0):
        return
    b.plot(live, [(p50(f"live.{n}.cold") or math.nan) / cold0 for n in live],
           "o-", label="cold start p50 (× at 0)")
    b.plot(live, [(p50(f"live.{n}.rt") or math.nan) / rt0 for n in live],
           "s-", label="1+1 p50 (× at 0)")
    b.axhline(1.0, color="black", linewidth=0.8)
    b.set_xlabel("idle sessions alive")
    b.set_ylabel("ratio to no idle session")
    b.legend(fontsize=8)
    b.set_title("start and round trip with live sessions", fontsize=10)


def _memory(c: Any, p50: P50) -> None:
    bars = [(label, p50(key)) for label, key in MEMORY_BARS if p50(key) is not None]
    if bars:
        c.barh([x[0] for x in bars], [x[1] for x in bars])
        c.invert_yaxis()
        c.set_xlabel("MiB (p50)")
        c.tick_params(axis="y", labelsize=8)
        c.set_title("memory per session", fontsize=10)


def _times(d: Any, p50: P50) -> None:
    times = [(label, p50(key)) for label, key in TIME_BARS if p50(key)]
    if times:
        d.barh([x[0] for x in times], [max(x[1] or 0, 1e-6) * 1000 for x in times])
        d.invert_yaxis()
        d.set_xscale("log")
        d.set_xlabel("milliseconds (p50, log scale)")
        d.tick_params(axis="y", labelsize=8)
        d.set_title("failure paths and gVisor", fontsize=10)


def make_plot(data: dict[str, Any], path: Path) -> bool:
    """Four panels: throughput, growth with live sessions, memory, failure paths + runsc."""
    plt = plots.pyplot()
    if plt is None:
        return False
    s = data["series"]

    def p50(key: str) -> float | None:
        st = s.get(key, {}).get("stats")
        return st["p50"] if st else None

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    (a, b), (c, d) = axes
    _throughput(a, data, p50)
    _growth(b, data, p50)
    _memory(c, p50)
    _times(d, p50)
    fig.suptitle(f"agentbox scale benchmark, {data['mode']} mode, {data['date'][:10]}")
    return plots.save_figure(fig, path, dpi=100)
