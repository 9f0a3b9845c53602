"""Finding and removing what dead owners left behind: containers and run directories.

Leftovers are found by labels: every container carries the owning process's pid and
host name, and the path of its run directory. A container whose owner process is gone
(on this host) is an orphan; so is one whose run directory is gone (its session closed
but could not remove it), and a run directory no container names. The manager sweeps
at start and with every reaper pass; :func:`collect_garbage` (``agentbox gc``) does the
same pass by hand.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from sandbox._exceptions import SandboxError
from sandbox._rundir import remove_run_dir
from sandbox._runtime.base import (
    LABEL_APP,
    LABEL_HOST,
    LABEL_OWNER_PID,
    LABEL_RUN_DIR,
    Runtime,
)
from sandbox.utils import pid_alive

log = logging.getLogger("sandbox.manager")

ORPHAN_DIR_MIN_AGE_S = 120.0  # a run dir this young may belong to a session still starting


@dataclass(frozen=True)
class GarbageReport:
    containers: int
    directories: int


async def sweep_orphans(runtime: Runtime, run_root: Path, *,
                        only_dead_owners: bool = True,
                        engine_wide: bool = False) -> GarbageReport:
    """Remove containers of dead owners on this host, containers whose session closed
    without removing them, and run dirs no container names.

    Only containers whose run dir (their label) lies under *run_root* are considered:
    another user's or another tool's Agent Box containers on the same engine are theirs
    to sweep, even when their owner pid is not alive here (``engine_wide`` lifts that,
    for ``agentbox gc --all``)."""
    host = socket.gethostname()
    containers = await runtime.list({LABEL_APP: "agentbox"})
    removed = 0
    claimed_dirs: set[str] = set()
    for c in containers:
        owner = c.labels.get(LABEL_OWNER_PID, "")
        same_host = c.labels.get(LABEL_HOST, host) == host
        run_dir_label = c.labels.get(LABEL_RUN_DIR, "")
        if not engine_wide and not (run_dir_label and Path(run_dir_label).parent == run_root):
            continue
        # A live owner's session removes its run dir only as the last step of closing
        # (and creates it before the container), so a container of ours whose run dir is
        # gone is one that close() could not remove (an engine outage) or whose start
        # was abandoned before the engine answered: an orphan too.
        closed = same_host and _run_dir_gone(run_dir_label, run_root)
        orphan = (same_host and owner.isdigit() and not pid_alive(int(owner))) \
            or closed or not only_dead_owners
        if orphan:
            try:
                await runtime.remove(c.id)
                removed += 1
            except SandboxError as exc:
                log.warning("could not remove orphan container %s: %s", c.id[:12], exc)
                claimed_dirs.add(c.labels.get(LABEL_RUN_DIR, ""))
            else:
                run_dir = c.labels.get(LABEL_RUN_DIR)
                if run_dir and Path(run_dir).parent == run_root:
                    remove_run_dir(run_dir)
        else:
            claimed_dirs.add(c.labels.get(LABEL_RUN_DIR, ""))
    dirs = await asyncio.to_thread(_sweep_dirs, run_root, claimed_dirs, only_dead_owners)
    return GarbageReport(removed, dirs)


def _run_dir_gone(label: str, run_root: Path) -> bool:
    """Whether a container's run dir (its label) was one of ours and has been removed."""
    return bool(label) and Path(label).parent == run_root and not os.path.lexists(label)


def _sweep_dirs(run_root: Path, claimed: set[str], only_dead_owners: bool) -> int:
    """Remove session run dirs that no container claims (and that are not brand new)."""
    if not run_root.is_dir():
        return 0
    dirs = 0
    now = time.time()
    for child in run_root.iterdir():
        if not child.name.startswith("s-") or str(child) in claimed:
            continue
        try:
            age = now - child.stat().st_mtime
        except OSError:
            continue
        if age >= ORPHAN_DIR_MIN_AGE_S or not only_dead_owners:
            remove_run_dir(child)
            dirs += 1
    return dirs


def collect_garbage(run_root: Path | None = None, *, engine_wide: bool = False) -> GarbageReport:
    """``agentbox gc``: one orphan sweep, synchronously (``--all``: *engine_wide*)."""
    from sandbox._config import default_base_dir
    from sandbox._runtime.dockerd import DockerRuntime

    async def sweep() -> GarbageReport:
        runtime = DockerRuntime()
        try:
            return await sweep_orphans(runtime, run_root or default_base_dir(),
                                       engine_wide=engine_wide)
        finally:
            await runtime.close()

    return asyncio.run(sweep())
