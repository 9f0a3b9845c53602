"""The service's bookkeeping on the in-memory runtime: no Docker, no kernel.

SandboxService on a SessionManager whose sessions are FakeSessions (tests/unit/_fakes.py):
which key owns which session, the per-key and per-server caps with their reservations,
what a close or an expiry frees, and what drain and shutdown leave. What needs a kernel
(executions, files, streams, the history's notebooks) stays in tests/api/.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from api.server.errors import ApiError
from api.server.schemas import CreateSession, Limits
from api.server.service import SandboxService
from api.server.settings import Settings
from sandbox import (
    ManagerConfig,
    SessionManager,
    SessionNotFoundError,
    SessionStartError,
    SessionState,
)
from sandbox._runtime.fake import FakeRuntime
from tests.unit._fakes import Behaviour, FakeSession, use_fake_sessions

A, B = "key-a", "key-b"


@dataclass
class Rig:
    service: SandboxService
    behaviour: Behaviour
    runtime: FakeRuntime
    shut: bool = False

    async def create(self, key_id: str, **limits: float) -> str:
        out = await self.service.create(key_id, CreateSession(limits=Limits(**limits)))
        return out.id

    async def shutdown(self) -> None:
        if not self.shut:
            self.shut = True
            await self.service.shutdown()

    def session(self, sid: str) -> FakeSession:
        return next(s for s in self.behaviour.made if s.id == sid)


@contextlib.asynccontextmanager
async def running(tmp_path: Path, behaviour: Behaviour | None = None,
                  **settings: object) -> AsyncIterator[Rig]:
    values: dict[str, object] = {"data_dir": tmp_path / "data", "pool_size": 0,
                                 "api_keys": f"{A},{B}", "reaper_interval_s": 3600}
    values.update(settings)
    s = Settings(**values)  # type: ignore[arg-type]
    runtime = FakeRuntime()
    # The manager's own cap is above the service's: the service's caps are under test.
    manager = SessionManager(ManagerConfig(run_root=tmp_path / "run", pool_size=0,
                                           max_sessions=100,
                                           reaper_interval_s=s.reaper_interval_s),
                             runtime=runtime)
    behaviour = use_fake_sessions(manager, behaviour)
    service = SandboxService(s, manager=manager)
    await service.start()
    rig = Rig(service, behaviour, runtime)
    try:
        yield rig
    finally:
        await rig.shutdown()


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.01)


def refused(exc: BaseException | None, status: int, code: str) -> bool:
    return isinstance(exc, ApiError) and (exc.status, exc.code) == (status, code)


# -- ownership -------------------------------------------------------------------------


async def test_a_key_cannot_see_or_close_another_keys_session(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        service = rig.service
        sid = await rig.create(A, idle_timeout_s=600)
        assert [o.id for o in service.list_sessions(A, {})] == [sid]
        assert service.list_sessions(B, {}) == []
        with pytest.raises(SessionNotFoundError):
            service.get(B, sid)
        with pytest.raises(SessionNotFoundError):
            await service.delete(B, sid)
        with pytest.raises(SessionNotFoundError):
            await service.interrupt(B, sid)
        with pytest.raises(SessionNotFoundError):
            await service.execute(B, sid, "1", None)
        # B's attempts changed nothing for A.
        out = service.get(A, sid)
        assert (out.status, out.limits["idle_timeout_s"]) == ("ready", 600)
        assert len(rig.runtime.containers) == 1


async def test_a_close_takes_the_session_from_its_key_and_removes_its_container(
        tmp_path: Path) -> None:
    async with running(tmp_path, max_sessions_per_key=1) as rig:
        service = rig.service
        sid = await rig.create(A)
        await service.delete(A, sid)
        with pytest.raises(SessionNotFoundError):
            service.get(A, sid)
        with pytest.raises(SessionNotFoundError):
            await service.delete(A, sid)  # a second close is a 404 too
        assert service.list_sessions(A, {}) == []
        assert rig.runtime.containers == {} and rig.behaviour.closed == 1
        await rig.create(A)  # the key's one place is free again


async def test_listing_filters_by_metadata_within_the_key(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        service = rig.service
        tagged = await service.create(A, CreateSession(metadata={"job": "x"}))
        await service.create(A, CreateSession(metadata={"job": "y"}))
        await service.create(B, CreateSession(metadata={"job": "x"}))
        assert [o.id for o in service.list_sessions(A, {"job": "x"})] == [tagged.id]
        assert len(service.list_sessions(A, {})) == 2


# -- caps and reservations -------------------------------------------------------------


async def test_a_burst_of_creates_from_one_key_cannot_exceed_its_cap(tmp_path: Path) -> None:
    async with running(tmp_path, Behaviour(start_s=0.1), max_sessions_per_key=3) as rig:
        service = rig.service
        results = await asyncio.gather(*(rig.create(A) for _ in range(10)),
                                       return_exceptions=True)
        made = [r for r in results if isinstance(r, str)]
        assert len(made) == 3
        assert all(refused(r, 429, "capacity") for r in results if not isinstance(r, str))
        assert "maximum per key" in str(next(r for r in results if not isinstance(r, str)))
        assert rig.behaviour.started == 3 and len(service.list_sessions(A, {})) == 3
        await rig.create(B)  # another key has its own cap


async def test_the_server_cap_counts_every_key_and_starts_in_flight(tmp_path: Path) -> None:
    async with running(tmp_path, Behaviour(start_s=0.2), max_sessions=2,
                       max_sessions_per_key=2) as rig:
        starting = asyncio.create_task(rig.create(A))
        await asyncio.sleep(0.05)  # A's start holds a place before it is a session
        await rig.create(B)
        with pytest.raises(ApiError) as full:
            await rig.create(B)
        assert refused(full.value, 429, "capacity") and "server runs its maximum" in str(
            full.value)
        assert full.value.headers["Retry-After"]
        await starting


async def test_a_failed_start_frees_its_reservation(tmp_path: Path) -> None:
    behaviour = Behaviour(fail=SessionStartError("the kernel did not answer"))
    async with running(tmp_path, behaviour, max_sessions_per_key=2) as rig:
        for _ in range(3):  # more failures than the cap: none of them kept a place
            with pytest.raises(SessionStartError, match="did not answer"):
                await rig.create(A)
        assert rig.service.list_sessions(A, {}) == []
        behaviour.fail = None
        await rig.create(A)
        await rig.create(A)
        with pytest.raises(ApiError) as full:
            await rig.create(A)
        assert refused(full.value, 429, "capacity")


async def test_a_cancelled_create_frees_its_reservation(tmp_path: Path) -> None:
    async with running(tmp_path, Behaviour(start_s=5.0), max_sessions_per_key=1) as rig:
        first = asyncio.create_task(rig.create(A))
        await asyncio.sleep(0.05)
        with pytest.raises(ApiError):
            await rig.create(A)  # the starting one holds the key's place
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        rig.behaviour.start_s = 0.0
        await rig.create(A)


async def test_limits_above_the_servers_maxima_are_refused_before_anything_starts(
        tmp_path: Path) -> None:
    async with running(tmp_path, max_idle_timeout_s=60, default_idle_timeout_s=60) as rig:
        with pytest.raises(ApiError) as over:
            await rig.create(A, idle_timeout_s=61)
        assert refused(over.value, 422, "limit_exceeded") and "idle_timeout_s" in str(over.value)
        assert rig.behaviour.made == [] and rig.service.list_sessions(A, {}) == []


# -- expiry ----------------------------------------------------------------------------


async def test_an_expired_session_leaves_its_key_and_frees_its_place(tmp_path: Path) -> None:
    async with running(tmp_path, reaper_interval_s=0.05, max_sessions_per_key=1) as rig:
        service = rig.service
        sid = await rig.create(A, idle_timeout_s=0.1)

        def gone() -> bool:
            return not service.list_sessions(A, {})

        await wait_for(gone)
        with pytest.raises(SessionNotFoundError):
            service.get(A, sid)
        with pytest.raises(SessionNotFoundError):
            await service.delete(A, sid)
        assert rig.runtime.containers == {}
        await rig.create(A, idle_timeout_s=600)  # the key's place is free
        await wait_for(lambda: sid not in service.owned)  # and the janitor forgot it


# -- drain and shutdown ----------------------------------------------------------------


async def test_drain_refuses_new_work_interrupts_running_cells_and_closes_stuck_ones(
        tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        service = rig.service
        ends, hangs, calm = [rig.session(await rig.create(A)) for _ in range(3)]
        ends.state = hangs.state = SessionState.BUSY  # a cell runs in each
        hangs.interrupt_ends = False  # this one's cell ignores the interrupt
        await service.drain(grace_s=0.2)
        assert (ends.interrupts, hangs.interrupts, calm.interrupts) == (1, 1, 0)
        assert ends.state is SessionState.READY and calm.state is SessionState.READY
        assert hangs.state is SessionState.CLOSED
        with pytest.raises(SessionNotFoundError):
            service.get(A, hangs.id)
        with pytest.raises(ApiError) as stopping:
            await rig.create(B)
        assert refused(stopping.value, 503, "shutting_down")


async def test_shutdown_closes_every_session_of_every_key(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        service = rig.service
        sids = [await rig.create(key) for key in (A, A, B)]
        assert len(rig.runtime.containers) == 3
        await rig.shutdown()
        assert rig.runtime.containers == {} and rig.behaviour.closed == 3
        assert service.list_sessions(A, {}) == service.list_sessions(B, {}) == []
        for sid in sids:
            with pytest.raises(SessionNotFoundError):
                service.get(A, sid)
        with pytest.raises(ApiError) as stopping:
            await rig.create(A)
        assert refused(stopping.value, 503, "shutting_down")
