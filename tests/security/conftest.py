"""The attack suite runs under every isolation runtime this engine has: runc always,
gVisor (runsc) where it is registered. Under CI gVisor must be there (``make test``
installs it): a missing runsc fails the run instead of quietly testing less."""

from __future__ import annotations

import contextlib
import glob
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from sandbox import ExecutionResult, SandboxConfig, Session
from sandbox._runtime.dockerd import connect


def registered_runtimes() -> list[str]:
    try:
        client = connect(timeout=10)
    except Exception:
        return ["runc"]  # the engine fixture reports the missing engine
    try:
        found = set(client.info().get("Runtimes", {}))
    finally:
        client.close()
    return [r for r in ("runc", "runsc") if r in found] or ["runc"]


RUNTIMES = registered_runtimes()


@pytest.fixture(params=RUNTIMES, scope="module")
def runtime(request: pytest.FixtureRequest, engine: object) -> str:
    """The isolation runtime under test (module-scoped: share boxes per runtime)."""
    if os.environ.get("CI") and "runsc" not in RUNTIMES:
        pytest.fail("CI must run the attack suite under gVisor too: runsc is not "
                    "registered (make test runs AGENTBOX_WITH_RUNSC=1 scripts/ensure-docker)")
    return str(request.param)


# -- shared helpers for the attack suite ---------------------------------------------------
# Every attack is judged twice where that makes sense: from inside (what the sandboxed code
# sees) and from the host (what really happened to the machine, the engine, this process).


@contextlib.contextmanager
def open_box(runtime: str, **settings: Any) -> Iterator[Session]:
    """A started sync session under *runtime*; always closed (the leak check counts)."""
    box = Session(SandboxConfig(runtime=runtime, **settings))  # type: ignore[arg-type]
    try:
        box.start()
        yield box
    finally:
        box.close()


def run_ok(box: Session, code: str, timeout: float = 60) -> ExecutionResult:
    result = box.execute(code, timeout=timeout)
    assert result.status == "ok", (result.status, result.error, result.notes, result.death)
    return result


def probe(box: Session, code: str, timeout: float = 60) -> Any:
    """Run *code* (which prints one JSON document last) and return the document."""
    result = run_ok(box, code, timeout)
    lines = result.stdout.strip().splitlines()
    assert lines, result
    return json.loads(lines[-1])


def host_process_count() -> int:
    """Processes on the host, as the host sees them (numeric entries of the host's /proc)."""
    return sum(1 for p in os.listdir("/proc") if p.isdigit())


def host_meminfo(key: str = "MemAvailable") -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"{key} not in /proc/meminfo")


def own_rss() -> int:
    """This (host) process's resident memory in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def container_attrs(engine: Any, box: Session) -> dict[str, Any]:
    attrs: dict[str, Any] = engine.api.inspect_container(box.info.container_id)
    return attrs


def host_cgroup_file(container_id: str, controller: str, name: str) -> str | None:
    """The host's cgroup file of a container (v1 cgroupfs/systemd drivers, or v2)."""
    candidates = [
        f"/sys/fs/cgroup/{controller}/docker/{container_id}/{name}",
        f"/sys/fs/cgroup/{controller}/system.slice/docker-{container_id}.scope/{name}",
        f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/{name}",
        f"/sys/fs/cgroup/docker/{container_id}/{name}",
        *glob.glob(f"/sys/fs/cgroup/{controller}/**/*{container_id}*/{name}", recursive=True),
    ]
    for path in candidates:
        if os.path.exists(path):
            return path
    return None


def read_host_cgroup(container_id: str, controller: str, name: str) -> str:
    path = host_cgroup_file(container_id, controller, name)
    assert path is not None, f"no host cgroup file {controller}/{name} for {container_id[:12]}"
    with open(path) as fh:
        return fh.read().strip()


def host_processes_with(marker: str) -> list[int]:
    """Host pids whose command line contains *marker*."""
    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as fh:
                if marker.encode() in fh.read():
                    found.append(int(p))
        except OSError:
            continue
    return found
