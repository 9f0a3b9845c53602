"""Markdown blocks the reports share: number formats, the table of series with their
baselines and ratios, how to reproduce a run, the machine, the code, leaked containers.
Nothing here measures; everything reads a results dict."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from bench.harness import machine

COLUMNS_NOTE = ("Columns: percentiles are linear-interpolated over the *n* samples (with small "
                "*n*, p99 is close to the maximum); spread is min – max and the standard "
                "deviation; ratio is subject p50 / baseline p50 with a 95% bootstrap interval "
                "in brackets.")


# -- numbers -----------------------------------------------------------------------------------
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


def fmt_interval(c: dict[str, Any]) -> str:
    """A comparison's ratio with its 95% bootstrap interval in brackets."""
    lo, hi = c["ratio_ci95"]
    return f"{fmt_ratio(c['ratio'])} [{fmt_ratio(lo)}–{fmt_ratio(hi)}]"


def fmt_load(values: list[float] | None) -> str:
    return " / ".join(f"{x:.2f}" for x in values) if values else "–"


def fmt_load1(values: list[float] | None) -> str:
    return f"{values[0]:.1f}" if values else "–"


# -- tables ------------------------------------------------------------------------------------
def comparisons_of(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return [c for c in data["comparisons"] if c["subject"] == key]


def group_keys(data: dict[str, Any], group: str) -> list[str]:
    """The series of *group* that have statistics, in the order they were defined."""
    return [k for k, s in data["series"].items() if s["group"] == group and s.get("stats")]


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
        comps: list[dict[str, Any] | None] = [*comparisons_of(data, key)] or [None]
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


# -- the run -----------------------------------------------------------------------------------
def reproduce(suite: str, data: dict[str, Any], *, quick_flag: bool = True) -> list[str]:
    """How to run the suite again from the repository root, and what this run was."""
    quick = " --quick" if quick_flag and data["mode"] == "quick" else ""
    return ["Reproduce from the repository root:", "", "```sh",
            f".venv/bin/python -m bench {suite}{quick}", "```", "",
            f"This run: `{machine.scrub(data['command'])}`; raw samples in "
            f"`{machine.scrub(data.get('out', f'bench/results/{suite}.json'))}`.", ""]


def contention_note(m: dict[str, Any]) -> list[str]:
    """Why a loaded host makes the sandbox side look slower than it is, when it applies."""
    if str(m.get("docker_cgroup_version")) != "1":
        return []
    shares = m.get("docker_parent_cpu_shares")
    load = (m.get("loadavg_at_start") or [0])[0]
    return [f"- On this cgroup v1 host every container sits under the engine's `/docker` cgroup "
            f"(`cpu.shares` {shares or 1024}), which competes for CPU as *one* task beside each "
            "busy host process: when other work loads the machine (load average "
            f"{load:.1f} at the start of this run), all sandboxes together get about one host "
            "process's share, and the ratios against host-side baselines lean against the "
            "sandbox; on a quiet machine this does not apply."]


def machine_rows(m: dict[str, Any], *, affinity: bool = True, load: bool = True,
                 available: bool = False, docker: str = "runtime") -> list[str]:
    """The machine table's header and common rows. *docker*: what follows the cgroup
    version in the Docker row: ``runtime`` (the default one), ``runtimes`` (all) or ``""``."""
    cpu = f"| CPU | {m['cpu_model']}, {m['cpu_count']} logical CPUs"
    cpu += f" ({m.get('cpu_affinity')} usable by this process) |" if affinity else " |"
    memory = f"| memory | {m['memory_total_mib']} MiB total"
    memory += (f", {m.get('memory_available_mib_at_start')} MiB available at the start |"
               if available else " |")
    rows = ["| | |", "|---|---|", f"| platform | {m['platform']} |", cpu, memory]
    if load:
        rows.append(f"| load average (1/5/15 min) | start {fmt_load(m.get('loadavg_at_start'))}, "
                    f"end {fmt_load(m.get('loadavg_at_end'))} |")
    if docker == "runtimes":
        rows.append(f"| Docker | {m['docker_version']}, storage {m['docker_storage_driver']}, "
                    f"cgroup v{m['docker_cgroup_version']}, runtimes "
                    f"{', '.join(m.get('docker_runtimes') or [])} |")
    else:
        rows.append(f"| Docker | {m['docker_version']} (API {m['docker_api_version']}), storage "
                    f"{m['docker_storage_driver']}, cgroup v{m['docker_cgroup_version']}"
                    + (f", runtime {m['docker_default_runtime']} |" if docker else " |"))
    rows.append(f"| kernel image | `{m['image']}` ({m['image_size_mb']} MB) |")
    return rows


def code_row(data: dict[str, Any]) -> list[str]:
    """The commit measured and the files that differed from it, as a table row."""
    git = data.get("git") or {}
    if not git.get("commit"):
        return []
    mod = git.get("modified") or []
    return [f"| code | commit `{git['commit'][:12]}`"
            + (f", with uncommitted changes in {', '.join(f'`{p}`' for p in mod)}" if mod else "")
            + " |"]


def leaks_line(data: dict[str, Any], *, what: str = "Containers left behind by the run",
               how: str = "") -> list[str]:
    leaks = data["checks"].get("leaked_containers", [])
    return ["", f"{what}: {len(leaks)}" + (f" ({', '.join(leaks)})" if leaks else "")
            + how + ".", ""]
