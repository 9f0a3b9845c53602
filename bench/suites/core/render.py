"""The core suite's report, docs/benchmarks.md: the front page (an index of every
suite's report, read from their results), then the core library's figures."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from bench.harness import plot as plots
from bench.harness.recorder import RESULTS
from bench.harness.report import (
    COLUMNS_NOTE,
    code_row,
    contention_note,
    fmt_load1,
    fmt_ms,
    fmt_ratio,
    group_keys,
    leaks_line,
    machine_rows,
    reproduce,
    series_table,
)
from bench.harness.run import print_table
from bench.suites import all_suites
from bench.suites.core import CELL_GROUPS, TARGET_RATIO

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


def core_headlines(data: dict[str, Any]) -> list[str]:
    """One-line findings of a core run, for the index and the README."""
    comps = {c["figure"]: c for c in data["comparisons"] if "ratio" in c}
    series = data["series"]
    out = []
    cold = comps.get("cold start total / docker-run floor")
    host = comps.get("cold start total / host kernel start")
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


# -- the front page's index ----------------------------------------------------------------
def _runs(core: dict[str, Any], results: Path) -> dict[str, dict[str, Any] | None]:
    runs: dict[str, dict[str, Any] | None] = {}
    for suite in all_suites():
        runs[suite.name] = core if suite.name == "core" else None
        path = results / f"{suite.name}.json"
        if runs[suite.name] is None and path.exists():
            with contextlib.suppress(ValueError, OSError):
                runs[suite.name] = json.loads(path.read_text())
    return runs


def _index_row(suite: Any, data: dict[str, Any] | None) -> str:
    link = (f"[{suite.heading}](#core-library)" if suite.name == "core"
            else f"[{suite.heading}]({suite.report})")
    command = f"`.venv/bin/python -m bench {suite.name}`"
    if data is None:
        return f"| {link} | {suite.measures} | {command} | not run yet | – |"
    heads = core_headlines(data) if suite.name == "core" else data.get("headlines", [])
    return (f"| {link} | {suite.measures} | {command} | {data['date'][:16]}, "
            f"{data['mode']}, {data['duration_s']:.0f} s, load "
            f"{fmt_load1(data['machine'].get('loadavg_at_start'))} → "
            f"{fmt_load1(data['machine'].get('loadavg_at_end'))} | "
            f"{'; '.join(heads) or '–'} |")


def render_index(core: dict[str, Any], results: Path = RESULTS) -> list[str]:
    """The front page's index: the reports, how to reproduce them, on what machine.
    The other reports' dates and headlines come from their JSON results, when present."""
    m = core["machine"]
    suites = all_suites()
    runs = _runs(core, results)
    done = [d for d in runs.values() if d is not None]
    took = (f" The runs below took {sum(d['duration_s'] for d in done) / 60:.1f} minutes "
            f"together ({', '.join(sorted({d['mode'] for d in done}))} mode)."
            if len(done) == len(suites) else "")
    lines = [
        "# Benchmarks", "",
        "<!-- Generated by `python -m bench` (the index reads bench/results/*.json); edit "
        "bench/suites/, not this file. -->", "",
        f"{len(suites)} reports, one suite each. Every figure is a ratio against a baseline "
        "measured in the same run, interleaved with it: these machines are shared and noisy, so "
        "**read the ratios**; absolute times are context. Reproduce them all from the repository "
        "root with `make bench` (each suite alone: the command in the table; `--quick` for a "
        "run of about a minute, `--render-only FILE` to rebuild a report from its JSON)." + took,
        "", "```sh", "make bench", "```", "",
        "| Report | Measures | Command | Last run | Headlines |",
        "|---|---|---|---|---|",
        *[_index_row(s, runs[s.name]) for s in suites],
    ]
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


# -- the core library's figures -------------------------------------------------------------
def _target_lines(data: dict[str, Any]) -> list[str]:
    series = data["series"]
    targets = [c for c in data["comparisons"] if "target_met" in c]
    if not targets:
        return []
    lines = ["### Target", "",
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
    return [*lines, "", *contention_note(data["machine"]), ""]


def _output_notes(data: dict[str, Any]) -> list[str]:
    lines = []
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
    return lines


def _group_notes(data: dict[str, Any], group: str) -> list[str]:
    lines = []
    for c in data["comparisons"]:
        if c["group"] == group and group in CELL_GROUPS and "delta_p50_ms" in c:
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
        lines += _output_notes(data)
    if group in CELL_GROUPS:
        lines.append("- The sandbox kernel runs under the session defaults (1 CPU, 1 GiB, "
                     "hardened container); the host kernel has the whole machine.")
    if group in ("cold", *CELL_GROUPS):
        lines += _version_notes(data)
    return lines


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


def _machine(data: dict[str, Any]) -> list[str]:
    m, v, lib = data["machine"], data.get("versions", {}), data["libraries"]
    lines = ["### Machine", "", *machine_rows(m),
             f"| host Python | {m['python']}; jupyter_client {lib['jupyter_client']}, "
             f"ipykernel {lib['ipykernel']} |"]
    for side, label in (("sandbox_kernel", "sandbox kernel"), ("host_kernel", "host kernel")):
        if v.get(side):
            lines.append(f"| {label} | " + ", ".join(f"{k} {val}" for k, val in v[side].items())
                         + " |")
    return [*lines, *code_row(data), *leaks_line(data)]


def render(data: dict[str, Any], plot: str | None) -> str:
    lines = [
        *render_index(data),
        "## Core library", "",
        f"Measured {data['date']} in **{data['mode']}** mode ({data['duration_s']:.0f} s). "
        "Every figure stands beside a baseline measured in the same run on the same machine, "
        "interleaved with it, because these machines are noisy: **read the ratios**; the "
        "absolute times are context and will differ elsewhere.", "",
        *reproduce("core", data),
        "What the HTTP API adds on top of these library calls is measured by "
        "`python -m bench api`: see [benchmarks-api.md](benchmarks-api.md); throughput, memory, "
        "failure paths and gVisor by `python -m bench scale`: see "
        "[benchmarks-scale.md](benchmarks-scale.md).", "",
        COLUMNS_NOTE, "",
        *_target_lines(data),
    ]
    for group, title, text in GROUPS:
        keys = group_keys(data, group)
        if keys:
            lines += [f"### {title}", "", text, "", *series_table(data, keys), "",
                      *_group_notes(data, group), ""]
    if plot:
        lines += [f"![p50 of each figure beside its baseline]({plot})", ""]
    return "\n".join([*lines, *_machine(data)])


def make_plot(data: dict[str, Any], path: Path) -> bool:
    """A log-scale bar chart of p50 subject vs baseline; False when matplotlib is missing."""
    return plots.p50_bars(data, path, f"agentbox core benchmark, {data['mode']} mode, "
                                      f"{data['date'][:10]}")


def summary(data: dict[str, Any]) -> None:
    rows = []
    for c in data["comparisons"]:
        if "ratio" not in c:
            continue
        st = data["series"][c["subject"]]["stats"]
        b = data["series"][c["baseline"]]["stats"]
        lo, hi = c["ratio_ci95"]
        target = ("" if "target_met" not in c else
                  "[green]met[/green]" if c["target_met"] else "[red]not met[/red]")
        rows.append([c["figure"], fmt_ms(st["p50"]), fmt_ms(st["p95"]), fmt_ms(b["p50"]),
                     f"{fmt_ratio(c['ratio'])} [{fmt_ratio(lo)}–{fmt_ratio(hi)}]",
                     f"{c['delta_p50_ms']:+.1f} ms", target])
    print_table(f"agentbox core benchmark ({data['mode']}, {data['duration_s']:.0f} s)",
                ["figure", "p50", "p95", "baseline p50", "ratio [95% CI]", "Δ p50",
                 "target <5%"], rows)
