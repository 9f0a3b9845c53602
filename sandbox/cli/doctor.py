"""``agentbox doctor``: can this machine run sandboxes, and how well?

Each check reports what it found, not what it assumes. Limits are checked the
only trustworthy way: a container is started with known memory, pids and cpu
limits and reads its own cgroup files (Docker drops limits it cannot enforce
with a mere warning).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from sandbox._exceptions import SandboxError
from sandbox._rundir import probe_capped
from sandbox._runtime.dockerd.diagnose import Engine

PROBE_MEMORY_MB = 192
PROBE_PIDS = 77
PROBE_CPUS = 0.5
_V1 = ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/pids/pids.max",
       "/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")
_V2 = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/cpu.max")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail,
                "required": self.required}


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks if c.required)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.to_dict() for c in self.checks],
                "facts": self.facts}


def parse_limits(text: str) -> dict[str, float | None]:
    """Parse the probe's cgroup readings (v1 or v2) into memory bytes, pids, cpus."""
    values = [line.strip() for line in text.strip().splitlines()]
    out: dict[str, float | None] = {"memory": None, "pids": None, "cpus": None}

    def num(v: str) -> float | None:
        return float(v) if v and v.lstrip("-").isdigit() else None

    if len(values) == 4:  # v1: memory, pids, quota, period
        out["memory"], out["pids"] = num(values[0]), num(values[1])
        quota, period = num(values[2]), num(values[3])
        if quota and period and quota > 0:
            out["cpus"] = quota / period
    elif len(values) == 3:  # v2: memory.max, pids.max, "quota period"
        out["memory"], out["pids"] = num(values[0]), num(values[1])
        parts = values[2].split()
        if len(parts) == 2 and parts[0].isdigit():
            out["cpus"] = int(parts[0]) / int(parts[1])
    return out


def limits_enforced(seen: dict[str, float | None]) -> list[str]:
    """Names of limits not in force at the probe's values."""
    missing = []
    if seen["memory"] != PROBE_MEMORY_MB * 1024 * 1024:
        missing.append("memory")
    if seen["pids"] != PROBE_PIDS:
        missing.append("pids")
    if seen["cpus"] is None or abs(seen["cpus"] - PROBE_CPUS) > 0.01:
        missing.append("cpu")
    return missing


def _probe_limits(engine: Engine, image: str, cgroup_version: str) -> Check:
    files = _V2 if cgroup_version == "2" else _V1
    script = "; ".join(f"cat {f} 2>/dev/null || echo missing" for f in files)
    try:
        out = engine.run_once(
            image, ["sh", "-c", script],
            mem_limit=f"{PROBE_MEMORY_MB}m", memswap_limit=f"{PROBE_MEMORY_MB}m",
            pids_limit=PROBE_PIDS, nano_cpus=int(PROBE_CPUS * 1e9), read_only=True,
            cap_drop=["ALL"], user="1000:1000",
        )
    except SandboxError as exc:
        return Check("limits enforced", False, f"probe container failed: {exc}")
    seen = parse_limits(out)
    missing = limits_enforced(seen)
    if missing:
        return Check("limits enforced", False,
                     f"not enforced: {', '.join(missing)} (read inside a container: {seen})")
    return Check("limits enforced", True,
                 f"memory, pids and cpu read back from the cgroup inside a container "
                 f"(cgroup v{cgroup_version})")


def run_checks(runtime_check: bool = True) -> Report:
    report = Report()
    try:
        engine = Engine(timeout_s=15)
    except SandboxError as exc:
        report.checks.append(Check("engine", False, str(exc)))
        report.checks.append(Check("kernel image", False, "unknown: no engine"))
        return report
    with engine:
        _engine_checks(engine, report, runtime_check)
    return report


def _engine_checks(engine: Engine, report: Report, runtime_check: bool) -> None:
    try:
        info = engine.info()
        version = engine.version()
    except SandboxError as exc:
        report.checks.append(Check("engine", False, f"engine answered ping but not info: {exc}"))
        return
    report.facts.update({
        "engine_version": version.get("Version"), "api_version": version.get("ApiVersion"),
        "cgroup_version": str(info.get("CgroupVersion", "1")),
        "cgroup_driver": info.get("CgroupDriver"), "runtimes": sorted(info.get("Runtimes", {})),
        "default_runtime": info.get("DefaultRuntime"), "kernel": info.get("KernelVersion"),
        "cpus": info.get("NCPU"), "memory_bytes": info.get("MemTotal"),
        "running_as_root": os.geteuid() == 0,
    })
    report.checks.append(Check("engine", True,
                               f"Docker {version.get('Version')} (API {version.get('ApiVersion')})"
                               f", {info.get('NCPU')} CPUs, "
                               f"{(info.get('MemTotal') or 0) / 2**30:.1f} GiB"))
    runtimes = report.facts["runtimes"]
    report.checks.append(Check("runtime runc", "runc" in runtimes,
                               "registered" if "runc" in runtimes else "missing"))
    has_runsc = "runsc" in runtimes
    report.checks.append(Check(
        "runtime runsc (gVisor)", has_runsc,
        "registered (runtime=\"runsc\" available)" if has_runsc else
        "not installed: optional; AGENTBOX_WITH_RUNSC=1 scripts/ensure-docker installs it",
        required=False))
    report.checks.append(Check("cgroup version", True,
                               f"v{report.facts['cgroup_version']} "
                               f"({report.facts['cgroup_driver']} driver)", required=False))
    capped, detail = probe_capped()
    report.facts["run_dir_capped"] = capped
    report.checks.append(Check("socket directory capped", capped, detail, required=False))
    _image_checks(engine, report, runtime_check)


def _image_checks(engine: Engine, report: Report, runtime_check: bool) -> None:
    try:
        status = engine.image_status()
    except SandboxError as exc:
        report.checks.append(Check("kernel image", False, f"cannot list images: {exc}"))
        return
    report.facts["image"] = status
    if status["current"]:
        size = status["size"] if isinstance(status["size"], int) else 0
        report.checks.append(Check("kernel image", True,
                                   f"{status['tag']} present and current ({size / 1e6:.0f} MB)"))
    else:
        stale = f"; older builds: {', '.join(status['others'])}" if status["others"] else ""  # type: ignore[arg-type]
        report.checks.append(Check("kernel image", False,
                                   f"{status['tag']} not built{stale}: run `agentbox image build`"))
    if runtime_check:
        if status["current"]:
            report.checks.append(_probe_limits(engine, str(status["tag"]),
                                               report.facts["cgroup_version"]))
        else:
            report.checks.append(Check("limits enforced", False,
                                       "not checked: needs the kernel image"))


def render(report: Report, console: Console) -> None:
    table = Table(title="Agent Box doctor", show_lines=False)
    table.add_column("check")
    table.add_column("")
    table.add_column("detail", overflow="fold")
    for check in report.checks:
        mark = "[green]ok[/]" if check.ok else ("[red]FAIL[/]" if check.required
                                                 else "[yellow]no[/]")
        table.add_row(check.name, mark, check.detail)
    console.print(table)
    verdict = "[green]ready: sandboxes can run here[/]" if report.ok else \
        "[red]not ready: fix the failed checks above[/]"
    console.print(verdict)
