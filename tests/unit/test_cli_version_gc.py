"""`agentbox --version`, and whose leftovers `agentbox gc` removes (a real engine).

The sweep used to remove every Agent Box container on the engine whose owner pid was
not alive here: another user's, or another tool's with its own run root (whose pid
means nothing in this pid namespace). Now it removes only what owners under its own
run root left; `agentbox gc --all` is the engine-wide sweep.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from sandbox._runtime.base import LABEL_APP, LABEL_HOST, LABEL_OWNER_PID, LABEL_RUN_DIR

ROOT = Path(__file__).resolve().parents[2]


def agentbox(*args: str, run_root: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if run_root is not None:
        env["AGENTBOX_RUN_ROOT"] = str(run_root)
    return subprocess.run([sys.executable, "-m", "sandbox.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_version_prints_the_installed_version() -> None:
    done = agentbox("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"agentbox {version('agentbox')}"


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid  # reaped: no process has it (pids are not reused this quickly)


@pytest.fixture
def leftovers(engine: Any, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Two stopped Agent Box containers of a dead owner on this host: one under the
    run root `mine`, one under another tool's run root."""
    image = engine.images.list(name="agentbox-kernel")[0].id
    made: dict[str, str] = {}
    for root in ("mine", "theirs"):
        run_dir = tmp_path / root / "s-leftover"
        run_dir.mkdir(parents=True)
        made[root] = engine.containers.create(image, command=["true"], network_disabled=True,
                                              labels={LABEL_APP: "agentbox",
                                                      LABEL_OWNER_PID: str(dead_pid()),
                                                      LABEL_HOST: socket.gethostname(),
                                                      LABEL_RUN_DIR: str(run_dir)}).id
    try:
        yield made
    finally:
        for cid in made.values():
            if exists(engine, cid):
                engine.api.remove_container(cid, force=True)


def exists(engine: Any, cid: str) -> bool:
    return bool(engine.api.containers(all=True, filters={"id": cid}))


def test_gc_sweeps_its_own_run_root_and_all_only_when_asked(
        engine: Any, tmp_path: Path, leftovers: dict[str, str]) -> None:
    done = agentbox("gc", run_root=tmp_path / "mine")
    assert done.returncode == 0, done.stderr
    assert not exists(engine, leftovers["mine"])  # a dead owner under our run root
    assert exists(engine, leftovers["theirs"])  # another run root's: left alone
    assert not (tmp_path / "mine" / "s-leftover").exists()
    assert (tmp_path / "theirs" / "s-leftover").exists()  # not ours to remove

    done = agentbox("gc", "--all", run_root=tmp_path / "mine")
    assert done.returncode == 0, done.stderr
    assert not exists(engine, leftovers["theirs"])  # engine-wide: removed
    assert "removed" in done.stderr and "container" in done.stderr
