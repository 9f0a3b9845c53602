"""The manager: warm pool, capacity, reaper, and cleanup after a crashed owner."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sandbox import (
    CapacityError,
    ManagerConfig,
    SandboxConfig,
    SessionManager,
    SessionNotFoundError,
    SessionState,
)
from sandbox._gc import sweep_orphans
from sandbox._runtime.base import LABEL_APP, LABEL_SESSION
from sandbox._runtime.dockerd import default_runtime

pytestmark = pytest.mark.usefixtures("engine")


async def wait_for(predicate: object, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_pool_serves_default_sessions_in_milliseconds_and_refills() -> None:
    async with SessionManager(ManagerConfig(pool_size=2)) as manager:
        await wait_for(lambda: manager.pool_level == 2)
        t0 = time.monotonic()
        session = await manager.create()
        took = time.monotonic() - t0
        assert session.from_pool and took < 0.1
        assert session.phases["pool_acquire"] < 0.1
        assert (await session.execute("1 + 1")).text == "2"
        await wait_for(lambda: manager.pool_level == 2)  # refilled in the background
        other = await manager.create()
        assert other.id != session.id and other.container_id != session.container_id
        custom = await manager.create(SandboxConfig(memory_mb=512))
        assert not custom.from_pool  # non-default settings start cold
        await manager.close(session.id)
        assert session.state is SessionState.CLOSED
        with pytest.raises(SessionNotFoundError):
            manager.get(session.id)


async def test_capacity_is_enforced() -> None:
    async with SessionManager(ManagerConfig(max_sessions=1)) as manager:
        first = await manager.create()
        with pytest.raises(CapacityError, match="1 sessions"):
            await manager.create()
        await manager.close(first.id)
        second = await manager.create()
        assert second.state is SessionState.READY


async def test_reaper_closes_idle_and_over_age_sessions() -> None:
    config = ManagerConfig(idle_timeout_s=1.0, max_lifetime_s=3.0, reaper_interval_s=0.2)
    async with SessionManager(config) as manager:
        idle = await manager.create()
        busy = await manager.create()
        task = asyncio.create_task(busy.execute("import time; time.sleep(2)", timeout=30))
        await wait_for(lambda: idle.state is SessionState.CLOSED, timeout=10)
        assert busy.state is not SessionState.CLOSED  # busy is not idle
        assert (await task).ok
        await wait_for(lambda: busy.state is SessionState.CLOSED, timeout=10)  # lifetime
        assert manager.list() == []


async def test_a_reaper_pass_cancelled_mid_close_ends_and_leaves_nothing(engine: object) -> None:
    # A shutdown cancels the reaper and waits for it. A pass cancelled while it closed a
    # session used to swallow the cancel (waiting for the kernel's tasks to stop) and
    # reap on forever: the shutdown never returned. Cancel at each step of a close.
    config = ManagerConfig(reaper_interval_s=3600)  # the passes here are the test's own
    async with SessionManager(config) as manager:
        for steps in range(8):
            session = await manager.create(idle_timeout_s=0.001)
            await asyncio.sleep(0.01)
            reaping = asyncio.create_task(manager.reap_once())
            for _ in range(steps):
                await asyncio.sleep(0)
            reaping.cancel()
            done, _ = await asyncio.wait([reaping], timeout=60)
            assert done, f"a pass cancelled after {steps} step(s) did not end"
            assert reaping.cancelled(), f"after {steps} step(s): {reaping!r}"
            if session.state is SessionState.CLOSED:  # it had begun: its close ran to the end
                assert session.container_id is None
                assert not session.run_dir.exists()
        # Every container left belongs to a session still open (a pass cancelled before
        # it began leaves its session to the next one).
        left = engine.containers.list(  # type: ignore[attr-defined]
            all=True, filters={"label": f"org.agentbox.manager={manager.instance_id}"})
        assert {c.labels.get(LABEL_SESSION) for c in left} <= {s.id for s in manager.list()}
    assert engine.containers.list(  # type: ignore[attr-defined]
        all=True, filters={"label": f"org.agentbox.manager={manager.instance_id}"}) == []


async def test_shutdown_closes_everything(engine: object) -> None:
    manager = SessionManager(ManagerConfig(pool_size=1))
    await manager.start()
    sessions = [await manager.create() for _ in range(2)]
    await wait_for(lambda: manager.pool_level == 1)
    await manager.shutdown()
    assert all(s.state is SessionState.CLOSED for s in sessions)
    left = engine.containers.list(  # type: ignore[attr-defined]
        all=True, filters={"label": f"org.agentbox.manager={manager.instance_id}"})
    assert left == []


CRASHER = textwrap.dedent("""
    import asyncio, os, signal, sys
    from sandbox import AsyncSession
    async def main():
        s = await AsyncSession().start()
        print(s.container_id, s.run_dir, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)   # die with a live session
    asyncio.run(main())
""")


async def test_sessions_of_a_killed_process_are_swept(engine: object, tmp_path: Path) -> None:
    run_root = Path(os.environ["AGENTBOX_RUN_ROOT"])
    proc = subprocess.run([sys.executable, "-c", CRASHER], capture_output=True, text=True,
                          timeout=60, env={**os.environ})
    assert proc.returncode == -9, proc.stderr
    container_id, run_dir = proc.stdout.split()
    assert Path(run_dir).is_dir()
    assert engine.containers.get(container_id).status == "running"  # type: ignore[attr-defined]
    report = await sweep_orphans(default_runtime(), run_root)
    assert report.containers >= 1
    assert not engine.containers.list(all=True, filters={"id": container_id})  # type: ignore[attr-defined]
    assert not Path(run_dir).exists()


async def test_sweep_leaves_live_sessions_alone() -> None:
    async with SessionManager() as manager:
        live = await manager.create()
        await sweep_orphans(manager.runtime, manager.config.run_root)
        assert (await live.execute("'still here'")).text == "'still here'"
        found = await manager.runtime.list({LABEL_APP: "agentbox", LABEL_SESSION: live.id})
        assert len(found) == 1


def test_agentbox_gc_removes_what_a_crashed_process_left(engine: object) -> None:
    proc = subprocess.run([sys.executable, "-c", CRASHER], capture_output=True, text=True,
                          timeout=60)
    container_id, run_dir = proc.stdout.split()
    gc = subprocess.run([sys.executable, "-m", "sandbox.cli", "gc"], capture_output=True,
                        text=True, timeout=120)
    assert gc.returncode == 0, gc.stderr
    assert re.search(r"removed [1-9]\d* container\(s\)", " ".join(gc.stderr.split()))
    assert not engine.containers.list(all=True, filters={"id": container_id})  # type: ignore[attr-defined]
    assert not Path(run_dir).exists()
