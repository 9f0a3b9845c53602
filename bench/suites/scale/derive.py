"""Figures derived from the scale suite's samples: thinned latencies, how many sessions
fit in memory, the headlines."""

from __future__ import annotations

import math
import random
from typing import Any

from bench.harness.recorder import Recorder
from bench.harness.report import fmt_ms, fmt_ratio
from bench.suites.scale import LATENCY_KEEP, RESERVE_FRACTION


def thin_latencies(rec: Recorder, keep: int = LATENCY_KEEP) -> dict[str, int]:
    """Keep a uniform sample of *keep* per-cell latencies per level (seeded); the counts."""
    counts = {}
    for key, s in rec.series.items():
        if key.endswith(".lat"):
            counts[key] = len(s["samples"])
            if len(s["samples"]) > keep:
                s["samples"] = random.Random(key).sample(s["samples"], keep)
    return counts


def _per_session_growth(host: dict[str, dict[str, float]]) -> tuple[float, float]:
    """This process's RSS (MiB) and threads per live session, from 0 to the most alive."""
    top = max(int(k) for k in host)
    if not top:
        return 0.0, 0.0
    return ((host[str(top)]["rss_mib"] - host["0"]["rss_mib"]) / top,
            (host[str(top)]["threads"] - host["0"]["threads"]) / top)


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
    per_proc, threads = _per_session_growth(data["host_process"])
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
    i = s.get("fail.interrupt.overshoot", {}).get("stats")
    rs = s.get("fail.restart.overshoot", {}).get("stats")
    if i and rs:
        out.append(f"timeout → usable kernel: +{fmt_ms(i['p50'])} (interrupt), "
                   f"+{fmt_ms(rs['p50'])} (restart)")
    return out
