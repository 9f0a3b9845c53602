"""Every suite's report rendered from a small synthetic results dict (no engine): it
renders, its figures are there, and it holds no absolute path of this machine, even when
the results were written by a run that recorded some."""

from __future__ import annotations

import os
import random
import sys
import sysconfig
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bench import suites
from bench.__main__ import main
from bench.harness import machine, recorder
from bench.harness.recorder import Clock, Recorder, header
from bench.harness.run import write_report

REPO = Path(__file__).resolve().parents[2]
STDLIB_FILE = os.path.join(sysconfig.get_paths()["stdlib"], "asyncio", "base_events.py")


def fake_machine() -> dict[str, Any]:
    return {"platform": "Linux-6.1-x86_64", "python": "3.11.7", "cpu_model": "Test CPU",
            "cpu_count": 2, "cpu_affinity": 2, "memory_total_mib": 7900,
            "memory_available_mib_at_start": 5000, "loadavg_at_start": [1.0, 1.5, 2.0],
            "loadavg_at_end": [1.2, 1.4, 1.9], "docker_version": "27.0", "docker_api_version": "1.46",
            "docker_storage_driver": "overlay2", "docker_cgroup_version": "1",
            "docker_default_runtime": "runc", "docker_runtimes": ["runc", "runsc"],
            "docker_cgroup_driver": "cgroupfs", "docker_parent_cpu_shares": 1024,
            "kernel_version": "6.1", "image": "agentbox-kernel:test", "image_id": "sha256:00",
            "image_size_mb": 900.0}


def fill(rec: Recorder) -> None:
    for key, s in rec.series.items():
        rng = random.Random(key)
        scale = 100.0 if s["unit"] != "s" else 0.01
        for _ in range(12):
            rec.add(key, scale * (1 + rng.random()))
    rec.finish()


def base(name: str, rec: Recorder | None = None, **extra: Any) -> dict[str, Any]:
    plan = suites.get(name).plan(quick=True)
    data = header(name, plan, Clock(), git={"commit": "0" * 40, "modified": []},
                  machine=fake_machine(), **extra)
    # As an older run recorded it: the interpreter and the output by absolute path.
    data["command"] = f"{sys.executable} {REPO}/bench/bench_{name}.py --quick"
    data["out"] = str(REPO / "bench" / "results" / f"{name}.json")
    if rec is not None:
        data.update(series=rec.series, comparisons=rec.comparisons)
    return data


def core_data() -> dict[str, Any]:
    from bench.suites.core import measure
    from bench.suites.core.render import core_headlines

    fake = SimpleNamespace(rec=Recorder())
    for define in (measure.Bench.define_cold, measure.Bench.define_pool, measure.Bench.define_cells):
        define(fake)  # type: ignore[arg-type]
    fill(fake.rec)
    measure.mark_targets(fake.rec.comparisons)
    data = base("core", fake.rec, libraries={"jupyter_client": "8.6", "ipykernel": "6.31.0"},
                versions={"sandbox_kernel": {"ipykernel": "6.31.0", "ipython": "8.39.0"},
                          "host_kernel": {"ipykernel": "6.30.0", "ipython": "8.39.0"}},
                outputs={k: {"sandbox": {"result_mimes": ["text/plain"], "display_mimes": [],
                                         "stdout_bytes": 10, "outputs": 1},
                             "host": {"result_mimes": ["text/plain"], "display_mimes": [],
                                      "stdout_bytes": 10, "iopub_messages": 3}}
                         for k in ("print", "dataframe", "figure")},
                checks={"pool_misses": 0, "leaked_containers": []})
    data["headlines"] = core_headlines(data)
    return data


def api_data() -> dict[str, Any]:
    from bench.suites.api import measure
    from bench.suites.api.render import api_headlines

    fake = SimpleNamespace(rec=Recorder())
    for define in (measure.Bench.define_create, measure.Bench.define_execute,
                   measure.Bench.define_pool):
        define(fake)  # type: ignore[arg-type]
    for key in ("trivial", "dataframe", "figure"):
        fake.rec.define(f"store.{key}", "history", f"history write alone: {key}")
    fill(fake.rec)
    measure.mark_deltas(fake.rec)
    data = base("api", fake.rec, libraries={"fastapi": "0.115"}, outputs={},
                checks={"history_rows": 3, "api_executes": 3, "leaked_containers": [],
                        "pool_misses": {"api": 0, "library": 0},
                        "connections_per_server": {"1234": 1}})
    data["headlines"] = api_headlines(data)
    return data


def scale_data() -> dict[str, Any]:
    from bench.suites.scale import derive, failures, isolation
    from bench.suites.scale.fleet import Scale

    plan = suites.get("scale").plan(quick=True)
    fake = SimpleNamespace(rec=Recorder(), plan=plan)
    Scale.define_live(fake, sorted(plan.live_levels))  # type: ignore[arg-type]
    Scale.define_throughput(fake)  # type: ignore[arg-type]
    Scale.define_memory(fake)  # type: ignore[arg-type]
    failures.define_failures(fake)  # type: ignore[arg-type]
    isolation.define_isolation(fake)  # type: ignore[arg-type]
    fill(fake.rec)
    data = base(
        "scale", fake.rec, session_memory_limit_mb=1024,
        load=[{"phase": "start", "at_s": 0.0, "loadavg": [1.0, 1.0, 1.0]}], visits=[],
        bursts=[{"sessions": c, "machine_busy": 0.5} for c in plan.concurrency],
        fleet_starts=[{"from": 0, "to": 8, "parallel": 4, "seconds": 3.0}],
        host_process={"0": {"rss_mib": 100.0, "threads": 5}, "8": {"rss_mib": 120.0, "threads": 30}},
        memory={"available_mib_before": 5000.0, "available_mib_at_n": 4000.0, "fleet_at_n": 8},
        checks={"runsc": "registered", "latencies_recorded": {}, "interrupt_grace_s": 2.0,
                "first_interrupt_overshoot_s": 0.05, "leaked_containers": []})
    data["capacity"] = derive.capacity(data)
    data["headlines"] = derive.scale_headlines(data)
    return data


def tuning_data() -> dict[str, Any]:
    from bench.suites.tuning.measure import compare, headlines

    samples = {side: {kind: [0.001 * (1 + 0.1 * i) * (1 if side == "before" else 0.9)
                             for i in range(4)] for kind in ("wall", "cpu")}
               for side in ("before", "after")}
    comparisons = compare(samples)
    return base("tuning", samples=samples, comparisons=comparisons,
                headlines=headlines(comparisons), plain={"wall_per_cell": 0.001,
                                                         "cpu_per_cell": 0.0005},
                profile=f"  205.4  (cum 324.0)  112.7x  {STDLIB_FILE}:1845(_run_once)\n"
                        f"  123.4  (cum 564.6)    5.0x  {REPO}/sandbox/_kernel.py:190(deserialize)\n",
                checks={"leaked_containers": []})


BUILDERS = {"core": core_data, "api": api_data, "scale": scale_data, "tuning": tuning_data}


def forbidden() -> list[str]:
    paths = {str(REPO), sys.prefix, sys.base_prefix, sys.executable, str(Path.home()),
             sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]}
    return sorted(p for p in paths if len(p) > 1)


@pytest.mark.parametrize("name", suites.NAMES)
def test_report_renders_without_this_machines_paths(name: str, tmp_path: Path) -> None:
    suite = suites.get(name)
    data = BUILDERS[name]()
    report = tmp_path / suite.report
    write_report(suite, data, report, SimpleNamespace(print=lambda *_a: None))
    text = report.read_text()
    leaked = [p for p in forbidden() if p in text]
    assert not leaked, f"{name} report shows {leaked}"
    assert f".venv/bin/python -m bench {name}" in text
    if name in ("core", "scale"):  # the reports that show their headlines
        assert data["headlines"] and data["headlines"][0] in text
    assert (tmp_path / suite.plot).stat().st_size > 1000  # the plot was drawn
    if name == "tuning":
        assert "<stdlib>/asyncio/base_events.py:1845(_run_once)" in text
        assert " sandbox/_kernel.py:190(deserialize)" in text


def test_render_only_from_a_results_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "core.json"
    recorder.write_results(core_data(), results)
    report = tmp_path / "benchmarks.md"
    assert main(["core", "--render-only", str(results), "--report", str(report)]) == 0
    assert "## Core library" in report.read_text()
    assert "sandbox / host kernel" in capsys.readouterr().out
    # Results of another suite are refused.
    assert main(["api", "--render-only", str(results), "--report", str(report)]) == 1


@pytest.mark.parametrize("argv", [
    ["nope"], ["all", "--out", "x.json"], ["all", "--render-only", "x.json"],
    ["core", "--render-only", "--quick"], ["core", "--render-only", "/no/such/file.json"],
    ["core", "--no-report", "--report", "x.md"],
])
def test_bad_command_lines_are_usage_errors(argv: list[str],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage: python -m bench" in capsys.readouterr().err


def test_paths_as_reports_show_them() -> None:
    assert machine.display_path(REPO / "bench" / "x.json") == "bench/x.json"
    assert machine.display_path(STDLIB_FILE) == "<stdlib>/asyncio/base_events.py"
    assert machine.display_path("docs/x.md") == "docs/x.md"
    assert not os.path.isabs(machine.display_path("/some/where/else.json"))
    assert machine.command_line(["core", "--out", str(REPO / "o.json")]).endswith(
        "-m bench core --out o.json")
    assert not os.path.isabs(machine.python_command())
