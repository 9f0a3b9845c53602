"""The host side of a session's socket directory: a capped tmpfs of its own, unmounted
and removed by whoever removes the directory (close, the orphan sweep).

What the sandbox can do to it from inside is checked in tests/security
(test_resources.py fills it, test_filesystem.py runs a binary dropped in it)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from sandbox import AsyncSession, SandboxConfig
from sandbox._gc import ORPHAN_DIR_MIN_AGE_S, sweep_orphans
from sandbox._rundir import RUN_DIR_BYTES, make_run_dir, remove_run_dir
from sandbox._runtime.dockerd import DockerRuntime

pytestmark = pytest.mark.usefixtures("engine")


def mount_of(path: Path) -> dict[str, str] | None:
    """The mountinfo entry mounted exactly at *path*: fs type, mount and super options."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(path):
            sep = fields.index("-")
            return {"fstype": fields[sep + 1], "options": fields[5],
                    "super": fields[sep + 3]}
    return None


def test_a_run_dir_is_a_small_noexec_tmpfs_owned_by_the_kernel_user(tmp_path: Path) -> None:
    assert os.geteuid() == 0, "CI runs as root: the run dir's tmpfs needs it"
    path = tmp_path / "s-rundir"
    assert make_run_dir(path, 1000, 1000) is True
    try:
        found = mount_of(path)
        assert found is not None and found["fstype"] == "tmpfs", found
        assert {"noexec", "nosuid", "nodev"} <= set(found["options"].split(",")), found
        assert f"size={RUN_DIR_BYTES // 1024}k" in found["super"], found
        st = path.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (1000, 1000, 0o700)
    finally:
        remove_run_dir(path)
    assert not path.exists() and mount_of(path) is None


async def test_closing_a_session_unmounts_and_removes_its_run_dir() -> None:
    async with AsyncSession(SandboxConfig()) as box:
        run_dir = box.run_dir
        assert mount_of(run_dir) is not None
        assert (await box.execute("1 + 1")).text == "2"
    assert not run_dir.exists() and mount_of(run_dir) is None


async def test_the_sweep_unmounts_an_orphaned_run_dir(tmp_path: Path) -> None:
    orphan = tmp_path / "s-orphan"
    make_run_dir(orphan, 1000, 1000)
    old = time.time() - ORPHAN_DIR_MIN_AGE_S - 60  # no container claims it, and not new
    os.utime(orphan, (old, old))
    runtime = DockerRuntime()
    try:
        report = await sweep_orphans(runtime, tmp_path)
    finally:
        await runtime.close()
    assert report.directories == 1
    assert not orphan.exists() and mount_of(orphan) is None
