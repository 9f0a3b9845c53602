"""The four benchmark suites (``python -m bench <suite> --quick``), run for real: each
finishes, writes every figure it promises with positive numbers, and leaves no container
behind. So CI runs the benchmarks, and they cannot rot unnoticed.

The four suites run at the same time (each in its own process, so their containers
are told apart by the owner-pid label): the module took 3m22s on the 2-core machine with
a load average of 10 from other test suites, less on a quiet one. Timing is not what is
checked here; each suite's --quick plan is what keeps it short.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.usefixtures("engine")

REPO = Path(__file__).resolve().parents[2]
SUITES = ("core", "api", "scale", "tuning")
TIMEOUT_S = 540

CORE_SERIES = [
    "lib.cold.total", "lib.cold.container_start", "lib.cold.kernel_ready", "lib.cold.ttfr",
    "lib.cold.close", "floor.docker_run", "local.start", "local.shutdown",
    "lib.pool.acquire", "lib.pool.ttfr", "lib.pool.refill",
    *[f"{side}.rt.{cell}" for side in ("lib", "local")
      for cell in ("trivial", "print", "dataframe", "figure")],
]
API_SERIES = [
    "api.create", "lib.create", "api.delete", "lib.close", "api.get",
    *[f"{kind}.{cell}" for kind in ("api.json", "api.sse", "lib", "store")
      for cell in ("trivial", "dataframe", "figure")],
    "api.pool.acquire", "lib.pool.acquire", "api.pool.ttfr", "lib.pool.ttfr", "api.raw.trivial",
]
SCALE_FIXED = [
    "mem.idle.host", "mem.idle.usage", "mem.idle.anon", "mem.idle.shim", "mem.idle.docker_stats",
    "mem.pool.host", "mem.pool.usage", "mem.pool.anon", "mem.local.rss", "mem.local.anon",
    *[f"fail.{k}" for k in ("natural.overshoot", "interrupt.overshoot", "restart.overshoot",
                            "restart.work", "next.natural", "next.interrupt", "next.restart",
                            "rt", "died.detect", "died.next", "kill.call", "kill.detect",
                            "kill.after", "kill.next", "cold")],
    *[f"iso.{rt}.{k}" for rt in ("runc", "runsc")
      for k in ("cold", "container_start", "kernel_ready", "close", "rt", "df", "mem")],
]


def scale_series(data: dict[str, Any]) -> list[str]:
    plan = data["plan"]
    return [
        *SCALE_FIXED,
        *[f"live.{n}.{k}" for n in plan["live_levels"] for k in ("cold", "rt")],
        *[f"tput.{c}{k}" for c in plan["concurrency"] for k in ("", ".lat", ".cpu")],
    ]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Start all the quick runs at once; each test waits for its own."""
    out = tmp_path_factory.mktemp("bench")
    runs = {}
    for name in SUITES:
        log = (out / f"{name}.log").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench", name, "--quick", "--no-report",
             "--out", str(out / f"{name}.json")],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        runs[name] = (proc, log, out / f"{name}.json", out / f"{name}.log")
    yield runs
    for proc, log, _, _ in runs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # KeyboardInterrupt: the suite closes its sessions
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def finished(results: dict[str, Any], name: str) -> dict[str, Any]:
    proc, log, json_path, log_path = results[name]
    try:
        code = proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"python -m bench {name} --quick did not finish in {TIMEOUT_S} s")
    log.flush()
    tail = log_path.read_text()[-3000:]
    assert code == 0, f"python -m bench {name} --quick exited {code}:\n{tail}"
    data = json.loads(json_path.read_text())
    assert data["benchmark"] == name and data["mode"] == "quick"
    return data


def check_common(data: dict[str, Any], expected: list[str]) -> None:
    series = data["series"]
    missing = [k for k in expected if not series.get(k, {}).get("stats")]
    assert not missing, f"figures without samples: {missing}"
    for key in expected:
        st = series[key]["stats"]
        assert st["n"] >= 1 and len(series[key]["samples"]) >= 1, key
        for field in ("p50", "p95", "p99", "min", "max"):
            assert math.isfinite(st[field]) and st[field] > 0, f"{key}.{field} = {st[field]}"
        assert st["min"] <= st["p50"] <= st["p95"] <= st["p99"] <= st["max"], key
    assert data["comparisons"], "no ratios"
    for c in data["comparisons"]:
        assert c["subject"] in series and c["baseline"] in series, c
        assert "ratio" in c, f"ratio missing: {c['figure']}"
        assert math.isfinite(c["ratio"]) and c["ratio"] > 0, c
        lo, hi = c["ratio_ci95"]
        assert 0 < lo <= hi, c
    machine = data["machine"]
    for field in ("loadavg_at_start", "loadavg_at_end"):
        assert len(machine[field]) == 3, field
    assert machine["memory_total_mib"] > 0 and machine["cpu_count"] >= 1
    assert data["duration_s"] > 0
    assert data["checks"]["leaked_containers"] == []


@pytest.mark.timeout(TIMEOUT_S + 60)
def test_core_quick(results: dict[str, Any]) -> None:
    data = finished(results, "core")
    check_common(data, CORE_SERIES)
    targets = [c for c in data["comparisons"] if "target_met" in c]
    assert {c["subject"] for c in targets} == {f"lib.rt.{k}" for k in
                                               ("trivial", "print", "dataframe", "figure")}
    assert all(isinstance(c["target_met"], bool) for c in targets)
    assert data["headlines"]
    figure = data["outputs"]["figure"]
    assert "image/png" in figure["sandbox"]["display_mimes"]
    assert "image/png" in figure["host"]["display_mimes"]


@pytest.mark.timeout(TIMEOUT_S + 60)
def test_api_quick(results: dict[str, Any]) -> None:
    data = finished(results, "api")
    check_common(data, API_SERIES)
    targets = [c for c in data["comparisons"] if "target_met" in c]
    # JSON and SSE, for 1+1, the DataFrame and the figure; and 1+1 from http.client
    assert len(targets) == 7
    assert all(isinstance(c["target_met"], bool) for c in targets)
    assert data["checks"]["history_rows"] == data["checks"]["api_executes"]
    assert data["headlines"]
    # CPU per call of each 1+1 side: every metered call counted, the server's CPU seen
    cpu = data["cpu"]
    assert set(cpu) == {"lib.trivial", "api.json.trivial", "api.sse.trivial", "api.get",
                        "api.raw.trivial"}
    for name, c in cpu.items():
        assert c["n"] == data["series"][name]["stats"]["n"], name
        assert c["here_ms"] > 0 and c["total_ms"] >= c["here_ms"], (name, c)
    assert cpu["api.json.trivial"]["server_ms"] > 0.1  # the server parsed, ran and answered


@pytest.mark.timeout(TIMEOUT_S + 60)
def test_scale_quick(results: dict[str, Any]) -> None:
    data = finished(results, "scale")
    assert data["checks"]["runsc"] == "registered", "gVisor figures need runsc: make engine-gvisor"
    plan = data["plan"]
    assert len(plan["concurrency"]) >= 3 and plan["concurrency"][0] == 1
    assert plan["live_levels"][0] == 0 and len(plan["live_levels"]) >= 2
    check_common(data, scale_series(data))
    cap = data["capacity"]
    assert cap["max_idle_sessions"] > 0 and cap["max_sessions_at_limit"] > 0
    assert cap["per_idle_session_mib"] > 0
    assert len(data["bursts"]) == plan["rounds"] * len(plan["concurrency"])
    assert all(b["cells"] > 0 for b in data["bursts"])
    assert len(data["load"]) >= 5 and all(len(x["loadavg"]) == 3 for x in data["load"])
    assert len(data["headlines"]) == 4


@pytest.mark.timeout(TIMEOUT_S + 60)
def test_tuning_quick(results: dict[str, Any]) -> None:
    data = finished(results, "tuning")
    plan = data["plan"]
    for side in ("before", "after"):
        for kind in ("wall", "cpu"):
            values = data["samples"][side][kind]
            assert len(values) == plan["rounds"], (side, kind)
            assert all(math.isfinite(v) and v > 0 for v in values), (side, kind)
    for kind in ("wall", "cpu"):
        c = data["comparisons"][kind]
        lo, hi = c["ratio_ci95"]
        assert c["before_ms"] > 0 and c["after_ms"] > 0 and 0 < lo <= c["ratio"] <= hi, c
    # The profile really ran through the library's code: its own modules show up.
    assert "sandbox/_kernel.py" in data["profile"] and "by area" in data["profile"]
    assert data["plain"]["wall_per_cell"] > 0 and data["plain"]["cpu_per_cell"] > 0
    assert len(data["headlines"]) == 2
    assert data["checks"]["leaked_containers"] == []
