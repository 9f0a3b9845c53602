"""Reading memory and CPU from the host: a container's cgroup (v1 or v2), a process's
/proc entries, ``docker stats`` as a cross-check, the machine's CPU ticks."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.harness.errors import BenchError
from bench.suites.scale import MiB

CGROUP = Path("/sys/fs/cgroup")


def _kv(path: Path) -> dict[str, int]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value)
    return out


def cgroup_memory(container_id: str) -> dict[str, int] | None:
    """Bytes charged to the container's memory cgroup: ``usage`` (what the limit counts:
    anonymous memory, page cache, tmpfs), ``anon`` (its processes' private memory) and
    ``cache``. cgroup v1 (``memory/docker/<id>``, this host) or v2; None when not found."""
    v1 = CGROUP / "memory" / "docker" / container_id
    if (v1 / "memory.usage_in_bytes").exists():
        stat = _kv(v1 / "memory.stat")
        return {"usage": int((v1 / "memory.usage_in_bytes").read_text()),
                "anon": stat.get("total_rss", stat.get("rss", 0)),
                "cache": stat.get("total_cache", stat.get("cache", 0))}
    for v2 in (CGROUP / "system.slice" / f"docker-{container_id}.scope",
               CGROUP / "docker" / container_id):
        if (v2 / "memory.current").exists():
            stat = _kv(v2 / "memory.stat")
            return {"usage": int((v2 / "memory.current").read_text()),
                    "anon": stat.get("anon", 0), "cache": stat.get("file", 0)}
    return None


def proc_memory(pid: int) -> dict[str, int]:
    """RSS, private anonymous RSS and PSS (shared pages split between their users), bytes."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "Threads"):
                value = int(rest.split()[0])
                out[key] = value if key == "Threads" else value * 1024
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                out["Pss"] = int(line.split()[1]) * 1024
    return out


def parent_pid(pid: int) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return None


_UNITS = {"B": 1, "KiB": 1024, "MiB": MiB, "GiB": 1024 * MiB, "kB": 1e3, "MB": 1e6, "GB": 1e9}


def docker_stats(ids: Sequence[str]) -> dict[str, float]:
    """``docker stats --no-stream`` memory use (bytes) by short id: the CLI's own figure
    (the cgroup's usage less its page cache), as a cross-check of the cgroup reading."""
    if not ids:
        return {}
    done = subprocess.run(["docker", "stats", "--no-stream", "--format",
                           "{{.ID}} {{.MemUsage}}", *ids], capture_output=True, text=True,
                          timeout=60, check=False)
    out = {}
    for line in done.stdout.splitlines():
        short, _, usage = line.partition(" ")
        amount = usage.split("/")[0].strip()
        for unit in sorted(_UNITS, key=len, reverse=True):
            if amount.endswith(unit):
                with contextlib.suppress(ValueError):
                    out[short[:12]] = float(amount[: -len(unit)]) * _UNITS[unit]
                break
    return out


def cgroup_cpu_seconds(container_id: str) -> float | None:
    """CPU time the container's processes have used so far (cgroup v1 cpuacct, or v2)."""
    v1 = CGROUP / "cpuacct" / "docker" / container_id / "cpuacct.usage"
    if v1.exists():
        return int(v1.read_text()) / 1e9
    for v2 in (CGROUP / "system.slice" / f"docker-{container_id}.scope",
               CGROUP / "docker" / container_id):
        if (v2 / "cpu.stat").exists():
            return _kv(v2 / "cpu.stat").get("usage_usec", 0) / 1e6
    return None


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def self_memory() -> dict[str, float]:
    m = proc_memory(os.getpid())
    return {"rss_mib": m.get("VmRSS", 0) / MiB, "threads": m.get("Threads", 0)}


def container_host_memory(docker: Any, container_id: str) -> tuple[dict[str, int], int]:
    """The container's cgroup reading and its containerd-shim's PSS (bytes)."""
    cg = cgroup_memory(container_id)
    if cg is None:
        raise BenchError(f"no memory cgroup found for container {container_id[:12]} under {CGROUP}")
    pid = docker.api.inspect_container(container_id)["State"]["Pid"]
    shim_pid = parent_pid(pid) if pid else None
    shim = proc_memory(shim_pid).get("Pss", 0) if shim_pid else 0
    return cg, shim
