"""The manager's bookkeeping on the in-memory runtime: no Docker, no kernel.

The orphan sweep (dead owners, gone run dirs, unclaimed run dirs), capacity, the start
line's refusals, the reaper's lifetimes, the registry, shutdown and the warm pool's
accounting. What needs a kernel stays in tests/engine/test_manager.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandbox import (
    CapacityError,
    EngineUnavailableError,
    ManagerConfig,
    SandboxConfig,
    SandboxError,
    SessionManager,
    SessionNotFoundError,
    SessionStartError,
    SessionState,
    StartQueueFullError,
)
from sandbox._gc import ORPHAN_DIR_MIN_AGE_S, sweep_orphans
from sandbox._runtime.base import LABEL_APP, LABEL_HOST, LABEL_OWNER_PID, LABEL_RUN_DIR
from sandbox._runtime.fake import FakeRuntime
from tests.unit._fakes import Behaviour, use_fake_sessions


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def labels(run_dir: Path, pid: int, host: str | None = None) -> dict[str, str]:
    return {LABEL_APP: "agentbox", LABEL_OWNER_PID: str(pid),
            LABEL_HOST: host or socket.gethostname(), LABEL_RUN_DIR: str(run_dir)}


def run_dir(root: Path, name: str, *, age_s: float = 0.0) -> Path:
    path = root / name
    path.mkdir(parents=True)
    if age_s:
        when = time.time() - age_s
        os.utime(path, (when, when))
    return path


async def wait_for(predicate: object, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.01)


# -- the orphan sweep ------------------------------------------------------------------


async def test_sweep_removes_containers_of_dead_owners_and_keeps_live_ones(tmp_path: Path) -> None:
    rt = FakeRuntime()
    dead_dir, live_dir = run_dir(tmp_path, "s-dead"), run_dir(tmp_path, "s-live")
    dead = rt.plant(labels(dead_dir, dead_pid()))
    live = rt.plant(labels(live_dir, os.getpid()))
    report = await sweep_orphans(rt, tmp_path)
    assert (report.containers, report.directories) == (1, 0)
    assert rt.removed == [dead] and live in rt.containers
    assert not dead_dir.exists() and live_dir.is_dir()


async def test_sweep_removes_a_live_owners_container_whose_run_dir_is_gone(tmp_path: Path) -> None:
    rt = FakeRuntime()
    closed = rt.plant(labels(tmp_path / "s-closed", os.getpid()))  # its dir was removed
    report = await sweep_orphans(rt, tmp_path)
    assert report.containers == 1 and rt.removed == [closed]


async def test_sweep_leaves_other_hosts_and_other_run_roots_alone(tmp_path: Path) -> None:
    rt = FakeRuntime()
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    elsewhere = rt.plant(labels(run_dir(theirs, "s-a"), dead_pid()))
    other_host = rt.plant(labels(run_dir(mine, "s-b"), dead_pid(), host="another-host"))
    assert (await sweep_orphans(rt, mine)).containers == 0
    assert {elsewhere, other_host} <= set(rt.containers)
    # agentbox gc --all: engine-wide, dead owners on this host only
    report = await sweep_orphans(rt, mine, engine_wide=True)
    assert report.containers == 1 and rt.removed == [elsewhere]


async def test_sweep_removes_old_unclaimed_run_dirs_and_keeps_new_and_claimed(tmp_path: Path) -> None:
    rt = FakeRuntime()
    old = run_dir(tmp_path, "s-old", age_s=ORPHAN_DIR_MIN_AGE_S + 60)
    young = run_dir(tmp_path, "s-young")
    claimed = run_dir(tmp_path, "s-claimed", age_s=ORPHAN_DIR_MIN_AGE_S + 60)
    not_ours = run_dir(tmp_path, "other", age_s=ORPHAN_DIR_MIN_AGE_S + 60)
    rt.plant(labels(claimed, os.getpid()))
    report = await sweep_orphans(rt, tmp_path)
    assert (report.containers, report.directories) == (0, 1)
    assert not old.exists() and young.is_dir() and claimed.is_dir() and not_ours.is_dir()


async def test_a_container_that_cannot_be_removed_keeps_its_run_dir(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    rt = FakeRuntime()
    stuck_dir = run_dir(tmp_path, "s-stuck", age_s=ORPHAN_DIR_MIN_AGE_S + 60)
    rt.plant(labels(stuck_dir, dead_pid()))
    rt.fail_next("remove", SandboxError("remove container: removal of container is already "
                                        "in progress"))
    with caplog.at_level(logging.WARNING, logger="sandbox.manager"):
        report = await sweep_orphans(rt, tmp_path)
    assert (report.containers, report.directories) == (0, 0) and stuck_dir.is_dir()
    assert "could not remove orphan container" in caplog.text


async def test_a_sweep_during_an_outage_says_the_engine_does_not_answer(tmp_path: Path) -> None:
    rt = FakeRuntime()
    rt.down = True
    with pytest.raises(EngineUnavailableError, match="does not answer"):
        await sweep_orphans(rt, tmp_path)


# -- the manager -----------------------------------------------------------------------


def manager_config(tmp_path: Path, **kw: object) -> ManagerConfig:
    return ManagerConfig(run_root=tmp_path / "run", reaper_interval_s=3600, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def runtime() -> AsyncIterator[FakeRuntime]:
    yield FakeRuntime()


async def test_start_sweeps_what_a_dead_manager_left(tmp_path: Path, runtime: FakeRuntime) -> None:
    config = manager_config(tmp_path)
    config.run_root.mkdir(parents=True)
    left = runtime.plant(labels(run_dir(config.run_root, "s-left"), dead_pid()))
    manager = SessionManager(config, runtime=runtime)
    use_fake_sessions(manager)
    async with manager:
        assert runtime.removed == [left]


async def test_capacity_counts_sessions_and_starts_in_flight(tmp_path: Path,
                                                             runtime: FakeRuntime) -> None:
    manager = SessionManager(manager_config(tmp_path, max_sessions=2), runtime=runtime)
    behaviour = use_fake_sessions(manager, Behaviour(start_s=0.2))
    async with manager:
        first = asyncio.create_task(manager.create())
        second = asyncio.create_task(manager.create())
        await asyncio.sleep(0.05)  # both starting: the limit counts them
        with pytest.raises(CapacityError) as refused:
            await manager.create()
        assert refused.value.limit == 2
        one, _ = await asyncio.gather(first, second)
        assert len(manager.list()) == 2 and behaviour.started == 2
        await manager.close(one.id)
        assert one.state is SessionState.CLOSED
        with pytest.raises(SessionNotFoundError):
            manager.get(one.id)
        with pytest.raises(SessionNotFoundError):
            await manager.close(one.id)
        assert (await manager.create()).state is SessionState.READY


async def test_a_create_that_would_wait_too_long_is_refused_at_once(tmp_path: Path,
                                                                    runtime: FakeRuntime) -> None:
    config = manager_config(tmp_path, max_concurrent_starts=1, start_queue_timeout_s=0.5)
    manager = SessionManager(config, runtime=runtime)
    use_fake_sessions(manager, Behaviour(start_s=0.3))
    async with manager:
        manager.starts.typical_s = 2.0  # what starts are known to take
        holder = asyncio.create_task(manager.create())
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        with pytest.raises(StartQueueFullError) as refused:
            await manager.create()
        assert time.monotonic() - t0 < 0.2  # at once, not at its deadline
        assert refused.value.retry_after_s >= 1 and "start_queue_timeout_s" in str(refused.value)
        assert manager.failed_starts == 1
        await holder


async def test_a_failed_start_is_counted_logged_and_leaves_nothing(tmp_path: Path, runtime: FakeRuntime,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    manager = SessionManager(manager_config(tmp_path), runtime=runtime)
    use_fake_sessions(manager, Behaviour(fail=SessionStartError("the kernel did not answer")))
    async with manager:
        with caplog.at_level(logging.WARNING, logger="sandbox.manager"), \
                pytest.raises(SessionStartError, match="did not answer"):
            await manager.create()
        assert manager.failed_starts == 1 and manager.list() == []
        assert "did not start (phase container" in caplog.text
        assert manager.starts.active == 0  # the slot was given back


async def test_the_reaper_closes_idle_and_over_age_sessions(tmp_path: Path,
                                                            runtime: FakeRuntime) -> None:
    config = manager_config(tmp_path, idle_timeout_s=60, max_lifetime_s=600)
    manager = SessionManager(config, runtime=runtime)
    use_fake_sessions(manager)
    async with manager:
        idle = await manager.create()
        busy = await manager.create()
        old = await manager.create(max_lifetime_s=5)
        fresh = await manager.create()
        patient = await manager.create(idle_timeout_s=3600)
        now = time.monotonic()
        idle.last_used = busy.last_used = patient.last_used = now - 120
        busy.state = SessionState.BUSY  # a running cell is never idle
        old.started_monotonic = now - 10
        assert await manager.reap_once() == 2
        assert manager.reaped == 2
        assert idle.state is SessionState.CLOSED and old.state is SessionState.CLOSED
        assert {s.id for s in manager.list()} == {busy.id, fresh.id, patient.id}
        busy.state = SessionState.READY


async def test_shutdown_closes_everything_and_refuses_more(tmp_path: Path,
                                                           runtime: FakeRuntime) -> None:
    manager = SessionManager(manager_config(tmp_path, pool_size=1), runtime=runtime)
    behaviour = use_fake_sessions(manager)
    async with manager:
        await manager.create(SandboxConfig(memory_mb=512))
        await wait_for(lambda: manager.pool_level == 1)
    assert runtime.containers == {} and behaviour.closed == behaviour.started == 2
    with pytest.raises(SessionStartError, match="shut down"):
        await manager.create()


async def test_the_pool_serves_defaults_refills_and_drops_dead_sessions(tmp_path: Path,
                                                                        runtime: FakeRuntime) -> None:
    manager = SessionManager(manager_config(tmp_path, pool_size=2), runtime=runtime)
    behaviour = use_fake_sessions(manager)
    async with manager:
        await wait_for(lambda: manager.pool_level == 2)
        taken = await manager.create()
        assert taken.from_pool and "pool_acquire" in taken.phases
        assert manager.get(taken.id) is taken
        await wait_for(lambda: manager.pool_level == 2)  # refilled
        cold = await manager.create(SandboxConfig(memory_mb=512))
        assert not cold.from_pool  # non-default settings start cold
        pooled = [s for s in behaviour.made if s.state is SessionState.READY
                  and s.id not in {taken.id, cold.id}]
        assert len(pooled) == 2
        pooled[0].state = SessionState.DEAD  # its kernel died while it waited
        served = await manager.create()
        assert served.id != pooled[0].id and served.from_pool
        await wait_for(lambda: pooled[0].state is SessionState.CLOSED)
        await wait_for(lambda: manager.pool_level == 2)
        assert len(runtime.containers) == 2 + 3  # the pool's two, and three handed out


async def test_the_pool_backs_off_when_refills_fail(tmp_path: Path, runtime: FakeRuntime) -> None:
    manager = SessionManager(manager_config(tmp_path, pool_size=1), runtime=runtime)
    use_fake_sessions(manager, Behaviour(fail=SessionStartError("no kernel")))
    async with manager:
        await wait_for(lambda: manager._pool.failures >= 1)
        assert manager.pool_level == 0 and manager._pool.last_error == "no kernel"


async def test_the_fake_runtime_probes_like_an_engine(runtime: FakeRuntime) -> None:
    assert (await runtime.probe()).ok
    runtime.image_present = False
    assert (await runtime.probe("agentbox-kernel:x")).as_health() == {
        "engine": True, "image": "agentbox-kernel:x", "image_present": False}
    runtime.down = True
    probe = await runtime.probe()
    assert not probe.engine and "does not answer" in probe.engine_error
