"""The API suite's report, docs/benchmarks-api.md: the added milliseconds per call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.harness import plot as plots
from bench.harness.report import (
    code_row,
    fmt_interval,
    fmt_ms,
    fmt_ratio,
    fmt_spread,
    group_keys,
    leaks_line,
    machine_rows,
    reproduce,
)
from bench.harness.run import print_table
from bench.suites.api import CODE_OF, EXECUTE_GROUPS, TARGET_MS

GROUPS = [
    ("trivial", "1. Trivial cell (`1+1`) per execute",
     "One API session (`POST /v1/sessions/{id}/execute`, JSON body `{\"code\": \"1+1\"}`) and one "
     "library `AsyncSession` in the main thread's loop (`await session.execute(\"1+1\")`), "
     "alternating in blocks. JSON: request to the parsed response body. SSE: same request with "
     "`Accept: text/event-stream`, to the parsed data of the `event: result` line. "
     "`GET /v1/sessions/{id}` is the HTTP floor: the whole HTTP stack, no kernel."),
    ("dataframe", "2. 10,000-row DataFrame display per execute",
     "`import pandas as pd, numpy as np; df = pd.DataFrame(np.random.rand(10000, 5)); df`, "
     "the same three ways, after warm-up runs (pandas imported on both kernels)."),
    ("figure", "2b. matplotlib figure per execute",
     "A 600×400 line plot shown inline (`plt.show()`): one `display_data` with a ~27 kB PNG "
     "(base64 in the JSON), the same three ways, after warm-up runs."),
    ("history", "3. The history write alone",
     "Every API execute writes its result as a row to SQLite (WAL, `synchronous=NORMAL`; a "
     "small row on the loop, a large one in a worker thread: api/server/history_inline.py) "
     "*before* it answers; that write is part of the added time above. Here it "
     "is timed alone: `HistoryStore.add_execution` with the result bodies the API returned, "
     "on a separate database file, in the main loop."),
    ("create", "4. Session create and delete",
     "`POST /v1/sessions` on a server with `pool_size=0` (a cold start, plus the SQLite "
     "`sessions` row) against `AsyncSession().start()`, then `DELETE /v1/sessions/{id}` against "
     "`await session.close()`; the sides alternate which goes first."),
    ("pool", "5. Pool acquire (`pool_size=2`)",
     "A second server with `pool_size=2`, against `SessionManager(ManagerConfig(pool_size=2))`. "
     "Before each take both pools are back at 2 (`GET /healthz` → `pool`, `m.pool_level`), so "
     "no refill runs during a take; then the take is timed, a `1+1` run, the session closed."),
]


def api_headlines(data: dict[str, Any]) -> list[str]:
    """One-line findings, for the index on the front page (docs/benchmarks.md)."""
    out = []
    for c in data["comparisons"]:
        if c["subject"] in ("api.json.trivial", "api.sse.trivial") and "target_met" in c:
            out.append(f"`1+1` {c['figure'].split(': ')[1].split(' vs')[0]} adds "
                       f"{c['delta_p50_ms']:+.2f} ms at p50 (target < {TARGET_MS:g} ms: "
                       f"{'met' if c['target_met'] else 'not met'})")
    targets = [c for c in data["comparisons"] if "target_met" in c]
    if targets:
        out.append(f"target met for {sum(c['target_met'] for c in targets)} of {len(targets)} "
                   "executes")
    return out


def fmt_added(c: dict[str, Any]) -> str:
    lo, hi = c["delta_ci95_ms"]
    return f"**{c['delta_p50_ms']:+.2f} ms** [{lo:+.2f} – {hi:+.2f}]"


def _target(data: dict[str, Any]) -> list[str]:
    series = data["series"]
    lines = ["## Target", "", f"From the issue: the API adds under {TARGET_MS:g} ms at p50 per "
             "execute.", "",
             "| Execute | API p50 | library p50 | added at p50 [95% CI] | target met |",
             "|---|--:|--:|--:|---|"]
    for c in data["comparisons"]:
        if "target_ms" not in c:
            continue
        verdict = "**yes**" if c["target_met"] else "**no**"
        if c["target_met"] and c["delta_ci95_ms"][1] >= c["target_ms"]:
            verdict += " (the interval reaches the target)"
        lines.append(f"| {c['figure']} | {fmt_ms(series[c['subject']]['stats']['p50'])} | "
                     f"{fmt_ms(series[c['baseline']]['stats']['p50'])} | {fmt_added(c)} | "
                     f"{verdict} |")
    lines.append("")
    json_c = next((c for c in data["comparisons"] if c["subject"] == "api.json.trivial"
                   and "delta_p50_ms" in c), None)
    floor = series.get("api.get", {}).get("stats")
    write = series.get("store.trivial", {}).get("stats")
    if json_c and floor and write:
        added, f_ms, w_ms = json_c["delta_p50_ms"], floor["p50"] * 1000, write["p50"] * 1000
        lines += [f"For scale (p50s of separate measurements, so approximate): of the "
                  f"{added:.2f} ms added to a `1+1` (JSON), an HTTP round trip with no kernel "
                  f"(`GET /v1/sessions/{{id}}`) takes {f_ms:.2f} ms and the SQLite history write "
                  f"alone {w_ms:.2f} ms; the rest, ~{added - f_ms - w_ms:.2f} ms, is the other work "
                  "of the execute path (routing and validation, the result to JSON and back, "
                  "log lines, the response's writes) and any difference between the two sessions' "
                  "containers."]
    raw_c = next((c for c in data["comparisons"] if c["subject"] == "api.raw.trivial"
                  and "delta_p50_ms" in c), None)
    if json_c and raw_c:
        lines += ["", f"The HTTP client's share: the same execute from the standard library's "
                  f"`http.client` (one keep-alive connection, each request in one send) adds "
                  f"{raw_c['delta_p50_ms']:+.2f} ms, so httpx itself accounts for "
                  f"~{json_c['delta_p50_ms'] - raw_c['delta_p50_ms']:.2f} ms of the JSON figure."]
    return [*lines, "", *_cpu(data)]


CPU_ROWS = [("lib.trivial", "1+1: library"), ("api.json.trivial", "1+1: API, JSON (httpx)"),
            ("api.raw.trivial", "1+1: API, JSON (http.client)"),
            ("api.sse.trivial", "1+1: API, SSE (httpx)"),
            ("api.get", "GET /v1/sessions/{id} (HTTP floor)")]


def _cpu(data: dict[str, Any]) -> list[str]:
    """CPU time per call beside the wall time: what each side costs in work, the server's
    and the client's apart."""
    cpu = data.get("cpu") or {}
    if "lib.trivial" not in cpu:
        return []
    lines = ["CPU time per call, mean over the same calls: the scheduler's own count of "
             "nanoseconds on a CPU (`/proc/PID/task/*/schedstat` for the server, "
             "`time.process_time_ns()` for the benchmark's process, which is the client or the "
             "library). It leaves out the waits for a CPU that wall time has on a busy machine, "
             "though a busy machine still makes the same work take more of it (shared caches "
             "and cores): compare rows of one run. The kernel's container is not counted on "
             "either side.", "",
             "| Call | n | server process | benchmark process | both |", "|---|--:|--:|--:|--:|"]
    for key, label in CPU_ROWS:
        if key in cpu:
            c = cpu[key]
            lines.append(f"| {label} | {c['n']} | {c['server_ms']:.3f} ms | {c['here_ms']:.3f} ms"
                         f" | {c['total_ms']:.3f} ms |")
    lib, get = cpu["lib.trivial"], cpu.get("api.get")
    api = cpu.get("api.json.trivial")
    if api is not None and get is not None:
        lines += ["", f"The server spends {api['server_ms']:.2f} ms of CPU on a `1+1` execute: "
                  f"{get['server_ms']:.2f} ms is what a `GET` costs it (the HTTP stack), "
                  f"{api['server_ms'] - get['server_ms']:.2f} ms the cell, its history row and "
                  f"its answer, where the library's own process spends {lib['here_ms']:.2f} ms "
                  "on the cell."]
    return [*lines, ""]


def _table(data: dict[str, Any], keys: list[str]) -> list[str]:
    series = data["series"]
    baselines = {c["baseline"] for c in data["comparisons"]}
    lines = ["| Figure | n | p50 | p95 | p99 | spread | baseline | baseline p50 | ratio | added |",
             "|---|--:|--:|--:|--:|---|---|--:|--:|--:|"]
    for key in keys:
        s, st = series[key], series[key]["stats"]
        head = (f"{s['label']} | {st['n']} | {fmt_ms(st['p50'])} | {fmt_ms(st['p95'])} | "
                f"{fmt_ms(st['p99'])} | {fmt_spread(st)}")
        comps = [c for c in data["comparisons"] if c["subject"] == key and "ratio" in c]
        if not comps:
            role = "*(a baseline)*" if key in baselines else "*(context)*"
            lines.append(f"| {head} | {role} | – | – | – |")
        for c in comps:
            b = series[c["baseline"]]
            lines.append(f"| {head} | {b['label']} | {fmt_ms(b['stats']['p50'])} | "
                         f"{fmt_interval(c)} | {fmt_added(c)} |")
    return [*lines, ""]


def _trivial_notes(checks: dict[str, Any]) -> list[str]:
    conns = checks.get("connections_per_server", {})
    return [
        "- What the API adds to each execute: the HTTP request and response (uvicorn, "
        "FastAPI routing, the body-limit and access-log middlewares, pydantic validation), "
        "the result serialised to JSON, **a history row written to SQLite before the "
        "response** (table 3), and two structured log lines at INFO, formatted as "
        "`agentbox serve` does (to its log file here).",
        "- The server is `agentbox serve` in a process of its own, as users run it; the "
        "client and the library share the benchmark's process. The API session and the "
        "library session are two containers with the same defaults.",
        f"- TCP connections the client opened per server: "
        f"{', '.join(str(n) for n in conns.values()) or '–'} (keep-alive: 1 expected).",
        f"- History rows written by the first server: {checks.get('history_rows', '–')}, "
        f"for {checks.get('api_executes', '–')} API executes (warm-ups included).",
    ]


def _notes(data: dict[str, Any], group: str) -> list[str]:
    checks, outs = data["checks"], data.get("outputs", {})
    notes: list[str] = []
    if group in EXECUTE_GROUPS and (o := outs.get(CODE_OF[group], {})):
        notes.append(f"- Bytes received per execute: JSON {o.get('json_bytes', 0):,}, SSE "
                     f"{o.get('sse_bytes', 0):,} ({o.get('sse_output_events', 0)} `output` "
                     "event(s) as published, then the `result` event, which repeats the "
                     "outputs).")
    if group == "trivial":
        notes += _trivial_notes(checks)
    if group == "history":
        comps = {c["subject"]: c for c in data["comparisons"] if "delta_p50_ms" in c}
        for key, label in (("trivial", "1+1"), ("dataframe", "DataFrame"), ("figure", "figure")):
            st = data["series"].get(f"store.{key}", {}).get("stats")
            c = comps.get(f"api.json.{key}")
            if st and c:
                notes.append(f"- {label}: the write alone takes {fmt_ms(st['p50'])} at p50, of "
                             f"the {c['delta_p50_ms']:.2f} ms the API adds (JSON).")
    if group == "create":
        notes.append("- A cold start is about half a second with tens of milliseconds of spread, "
                     "so the few milliseconds the API adds to it (an HTTP round trip and the "
                     "SQLite `sessions` row) are within its noise: see the interval.")
    if group == "pool":
        misses = checks.get("pool_misses", {})
        notes.append(f"- Takes that found the pool empty and started cold (excluded): API "
                     f"{misses.get('api', 0)}, library {misses.get('library', 0)}.")
        notes.append("- The library's acquire is a pop from a list (microseconds); the API's is "
                     "that plus an HTTP round trip and the SQLite `sessions` row: read the added "
                     "milliseconds, not the ratio.")
    return notes


def _machine(data: dict[str, Any]) -> list[str]:
    m, lib = data["machine"], data["libraries"]
    return ["## Machine", "", *machine_rows(m, docker=""),
            f"| host Python | {m['python']}; " + ", ".join(f"{k} {v}" for k, v in lib.items()) + " |",
            *code_row(data),
            *leaks_line(data, what="Containers of this run left behind",
                        how=" (checked by the `org.agentbox.owner-pid` label; other processes' "
                            "containers are not counted)")]


def render(data: dict[str, Any], plot: str | None) -> str:
    lines = [
        "# Benchmarks: HTTP API", "",
        "<!-- Generated by `python -m bench api` (bench/suites/api/); edit the suite, not this "
        "file. -->", "",
        f"Measured {data['date']} in **{data['mode']}** mode ({data['duration_s']:.0f} s). What "
        "the HTTP service adds on top of the library call: the real service (`agentbox serve`, "
        "a process of its own, as users run it) driven by one "
        "keep-alive `httpx.Client`, beside the library (`sandbox.AsyncSession`) in the main "
        "thread's asyncio loop, measured in the same run and alternating in blocks. These "
        "machines are noisy: **read the added milliseconds and the ratios**; the absolute "
        "times are context. The core library's own figures are in "
        "[benchmarks.md](benchmarks.md).", "",
        *reproduce("api", data),
        "Columns: percentiles are linear-interpolated over the *n* samples; spread is min – max "
        "and the standard deviation; ratio is subject p50 / baseline p50 with a 95% bootstrap "
        "interval; **added** is subject p50 − baseline p50 with a 95% bootstrap interval "
        "of that difference.", "",
        *_target(data),
    ]
    for group, title, text in GROUPS:
        keys = group_keys(data, group)
        if keys:
            lines += [f"## {title}", "", text, "", *_table(data, keys), *_notes(data, group), ""]
    if plot:
        lines += [f"![added milliseconds at p50, with 95% intervals]({plot})", ""]
    return "\n".join([*lines, *_machine(data)])


def make_plot(data: dict[str, Any], path: Path) -> bool:
    """Added ms at p50 (with 95% intervals): per execute, and per session operation."""
    plt = plots.pyplot()
    comps = [c for c in data["comparisons"] if "delta_ci95_ms" in c]
    panels = [(t, cs) for t, cs in (
        ("per execute", [c for c in comps if c["group"] in EXECUTE_GROUPS]),
        ("per session operation", [c for c in comps if c["group"] not in EXECUTE_GROUPS])) if cs]
    if plt is None or not panels:
        return False
    fig, axes = plt.subplots(len(panels), 1, squeeze=False,
                             figsize=(9, 1.2 + 0.45 * len(comps) + 0.6 * len(panels)))
    for ax, (title, cs) in zip(axes[:, 0], panels, strict=True):
        ys = list(range(len(cs)))
        mid = [c["delta_p50_ms"] for c in cs]
        err = [[m - c["delta_ci95_ms"][0] for m, c in zip(mid, cs, strict=True)],
               [c["delta_ci95_ms"][1] - m for m, c in zip(mid, cs, strict=True)]]
        ax.barh(ys, mid, xerr=err, height=0.5, capsize=3)
        ax.set_yticks(ys, [c["figure"] for c in cs], fontsize=8)
        ax.invert_yaxis()
        ax.axvline(0, color="black", linewidth=0.8)
        if title == "per execute":
            ax.axvline(TARGET_MS, color="red", linestyle="--", linewidth=1,
                       label=f"target: < {TARGET_MS:g} ms")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_xlabel("added milliseconds at p50 (API − library)")
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"agentbox API overhead, {data['mode']} mode, {data['date'][:10]}")
    return plots.save_figure(fig, path)


def summary(data: dict[str, Any]) -> None:
    rows = []
    for c in data["comparisons"]:
        if "ratio" not in c:
            continue
        lo, hi = c["delta_ci95_ms"]
        target = ("" if "target_ms" not in c else
                  "[green]met[/green]" if c["target_met"] else "[red]not met[/red]")
        rows.append([c["figure"], fmt_ms(data["series"][c["subject"]]["stats"]["p50"]),
                     fmt_ms(data["series"][c["baseline"]]["stats"]["p50"]), fmt_ratio(c["ratio"]),
                     f"{c['delta_p50_ms']:+.2f} ms [{lo:+.2f}, {hi:+.2f}]", target])
    print_table(f"agentbox API benchmark ({data['mode']}, {data['duration_s']:.0f} s)",
                ["figure", "API p50", "library p50", "ratio", "added p50 [95% CI]", "target"], rows)
