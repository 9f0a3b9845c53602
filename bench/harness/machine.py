"""The machine a run measured, and paths as a report may show them: relative to the
repository, ``<stdlib>/...``, ``.venv/...``; never an absolute path of this machine."""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
LIBRARY_PATHS = ("sandbox", "kernel_image")  # whose changes a run's git state lists


# -- paths as a report shows them ----------------------------------------------------------
def _prefixes(*, temp: bool = True) -> list[tuple[str, str]]:
    """(absolute prefix, what a report shows instead), longest first; *temp*: the
    temporary directory too."""
    # An importable module by its package (an editable install's path, say), unless a
    # more telling prefix below covers it.
    pairs: dict[str, str] = {p: "." for p in sys.path if os.path.isabs(p) and p != "/"}
    for key in ("purelib", "platlib"):
        with contextlib.suppress(KeyError):
            pairs[sysconfig.get_paths()[key]] = ""
    for key in ("stdlib", "platstdlib"):
        with contextlib.suppress(KeyError):
            pairs[sysconfig.get_paths()[key]] = "<stdlib>"
    if sys.prefix != sys.base_prefix:
        pairs[sys.prefix] = Path(sys.prefix).name
    pairs[str(REPO)] = "."
    if temp:
        pairs[tempfile.gettempdir()] = "<tmp>"
    pairs[str(Path.home())] = "~"
    real = {os.path.realpath(k): v for k, v in pairs.items() if k}
    pairs.update(real)
    return sorted(((k.rstrip("/"), v) for k, v in pairs.items() if k.rstrip("/")),
                  key=lambda kv: -len(kv[0]))


def display_path(path: str | os.PathLike[str]) -> str:
    """*path* without this machine's layout: relative to the repository, or under
    ``<stdlib>``, the venv's name, ``<tmp>`` or ``~``; a relative path stays as it is."""
    text = os.fspath(path)
    if not os.path.isabs(text):
        return text
    for prefix, shown in _prefixes():
        if text == prefix:
            return shown
        if text.startswith(prefix + "/"):
            rest = text[len(prefix) + 1:]
            return f"{shown}/{rest}" if shown and shown != "." else rest
    return f"…/{Path(text).name}"


def scrub(text: str) -> str:
    """*text* with every known absolute prefix of this machine replaced as
    :func:`display_path` would (for text measured or written elsewhere). The temporary
    directory is left alone: ``/tmp`` in a report is most often a path in the sandbox."""
    for prefix, shown in _prefixes(temp=False):
        replacement = f"{shown}/" if shown and shown != "." else ""
        text = text.replace(prefix + "/", replacement)
    return text


def python_command() -> str:
    """How a reader runs this interpreter from the repository root: ``.venv/bin/python``
    for a virtual environment, else the interpreter's name."""
    exe = Path(sys.executable)
    if exe.is_absolute() and exe.is_relative_to(REPO):
        return str(exe.relative_to(REPO))
    if sys.prefix != sys.base_prefix and exe.is_relative_to(sys.prefix):
        return str(Path(Path(sys.prefix).name) / exe.relative_to(sys.prefix))
    return exe.name or "python"


def command_line(argv: list[str] | None = None) -> str:
    """The command of this run, as ``python -m bench ...`` with paths made displayable."""
    args = sys.argv[1:] if argv is None else argv
    shown = [display_path(a) if os.path.isabs(a) else a for a in args]
    return shlex.join([python_command(), "-m", "bench", *shown])


# -- the machine -----------------------------------------------------------------------------
def meminfo_kib(field_name: str) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return None


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def docker_parent_shares() -> int | None:
    """cpu.shares of the cgroup (v1, cgroupfs driver) all containers sit under."""
    with contextlib.suppress(OSError, ValueError):
        return int(Path("/sys/fs/cgroup/cpu/docker/cpu.shares").read_text())
    return None


def loadavg() -> list[float]:
    return list(os.getloadavg())


def git_state(extra_paths: tuple[str, ...] = ()) -> dict[str, Any]:
    """The commit measured, and which files of the library (and *extra_paths*) differ."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              timeout=10, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    modified: list[str] = []
    for paths in (LIBRARY_PATHS, extra_paths):
        if paths:
            dirty = git("status", "--porcelain", "--", *paths)
            modified += [line[3:] for line in dirty.splitlines()]
    return {"commit": git("rev-parse", "HEAD") or None, "modified": modified}


def host_info() -> dict[str, Any]:
    """What this host is, without asking the engine."""
    mem_kib = meminfo_kib("MemTotal")
    available = meminfo_kib("MemAvailable")
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_total_mib": round(mem_kib / 1024) if mem_kib else None,
        "memory_available_mib_at_start": round(available / 1024) if available else None,
        "loadavg_at_start": loadavg(),
    }


def machine_info(client: Any, image: str) -> dict[str, Any]:
    """This host, the Docker engine (*client*: a docker SDK client) and the kernel image."""
    version = client.version()
    info = client.info()
    img = client.images.get(image)
    return {
        **host_info(),
        "docker_version": version.get("Version"),
        "docker_api_version": version.get("ApiVersion"),
        "docker_storage_driver": info.get("Driver"),
        "docker_cgroup_version": info.get("CgroupVersion"),
        "docker_default_runtime": info.get("DefaultRuntime"),
        "docker_runtimes": sorted(info.get("Runtimes") or {}),
        "docker_cgroup_driver": info.get("CgroupDriver"),
        "docker_parent_cpu_shares": docker_parent_shares(),
        "kernel_version": info.get("KernelVersion"),
        "image": image,
        "image_id": img.id,
        "image_size_mb": round((img.attrs.get("Size") or 0) / 1e6, 1),
    }
