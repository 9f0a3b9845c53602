"""The engine is briefly unavailable: clear errors, no hang, recovery when it returns.

The real dockerd is never stopped (that would kill every container on the machine):
the sessions here reach the engine through :class:`EngineProxy`, a Unix-socket proxy
the test cuts and restores. The kernel is driven over ZMQ sockets in the run
directory, not through the engine, so cells keep running during an outage; what goes
through the engine (file operations via ``docker exec``, starting a container,
replacing one, removing one) must fail fast with a SandboxError that says the engine
does not answer — at once when the engine refuses connections, within the docker
client's timeout when it hangs — and work again when it is back. A restart in place
needs only the container's init, so it works during an outage.

Warnings: docker-py does not close the socket of a connect that failed
(``UnixHTTPConnection.connect`` leaves it to the garbage collector), so each refused
call here leaks a socket that later raises ResourceWarning from ``__del__`` — which
this suite turns into an error, in whichever test the collector happens to run. The
module ignores ResourceWarning, and every test drops what still holds those sockets
(captured log records carry the exceptions as arguments) and collects garbage before
its end, so none of them reaches a later test, where the warning would be an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import docker
import pytest

from sandbox import (
    AsyncSession,
    EngineUnavailableError,
    ManagerConfig,
    SandboxError,
    SessionLostError,
    SessionManager,
    SessionState,
)
from sandbox._gc import sweep_orphans
from sandbox._runtime.base import LABEL_SESSION
from sandbox._runtime.dockerd import DockerRuntime
from tests.faults._proxy import EngineProxy, Mode

pytestmark = [
    pytest.mark.usefixtures("engine"),
    # See the module docstring: docker-py's failed connects leak their socket.
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]

CLIENT_TIMEOUT_S = 5  # the docker client's own timeout: bounds a call to a hung engine
REFUSED_WITHIN_S = 2.0  # a refused connection is known at once
HUNG_WITHIN_S = CLIENT_TIMEOUT_S + 3.0
ENGINE_SAYS = "does not answer"
KERNEL_START_WITHIN_S = 15.0  # a fresh kernel: 0.4 s here, far more on a loaded machine

T = TypeVar("T")


@pytest.fixture(autouse=True)
def collect_refused_sockets(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Torn down last: the sockets of refused connects are collected inside the test."""
    yield
    for phase in ("setup", "call"):  # records of warnings hold the exceptions, which
        caplog.get_records(phase).clear()  # hold the frames, which hold the sockets
    gc.collect()


@pytest.fixture
def proxy() -> Iterator[EngineProxy]:
    # A short directory of its own: a Unix socket path holds at most 107 bytes.
    with tempfile.TemporaryDirectory(prefix="agentbox-proxy-") as where:
        proxy = EngineProxy(Path(where) / "engine.sock").start()
        try:
            yield proxy
        finally:
            proxy.stop()


@pytest.fixture
async def runtime(proxy: EngineProxy) -> AsyncIterator[DockerRuntime]:
    client = docker.DockerClient(base_url=proxy.url, version="1.41", timeout=CLIENT_TIMEOUT_S)
    rt = DockerRuntime(client)
    try:
        yield rt
    finally:
        await rt.close()


@pytest.fixture
async def sessions(proxy: EngineProxy, runtime: DockerRuntime) -> AsyncIterator[list[AsyncSession]]:
    """Sessions a test opened through the proxy; closed with the engine reachable."""
    opened: list[AsyncSession] = []
    try:
        yield opened
    finally:
        proxy.restore()
        for session in opened:
            await session.close()


async def timed(awaitable: Awaitable[T]) -> tuple[T | BaseException, float]:
    """The outcome (value or exception) of *awaitable*, and how long it took."""
    t0 = time.monotonic()
    try:
        outcome: T | BaseException = await awaitable
    except Exception as exc:
        outcome = exc
    return outcome, time.monotonic() - t0


def assert_engine_error(outcome: object, seconds: float, within: float, what: str) -> None:
    assert isinstance(outcome, EngineUnavailableError), f"{what}: {outcome!r}"
    assert ENGINE_SAYS in str(outcome), f"{what}: {outcome}"
    assert seconds < within, f"{what} took {seconds:.1f}s during the outage"


async def open_session(runtime: DockerRuntime, opened: list[AsyncSession]) -> AsyncSession:
    session = AsyncSession(runtime=runtime)
    opened.append(session)
    return await session.start()


def containers_of(engine: Any, session: AsyncSession) -> list[Any]:
    """Asked of the real engine, not through the proxy."""
    return engine.containers.list(  # type: ignore[no-any-return]
        all=True, filters={"label": f"{LABEL_SESSION}={session.id}"})


@pytest.mark.parametrize("mode", ["refuse", "hang"])
async def test_cells_run_engine_calls_fail_fast_and_all_recovers(
        mode: Mode, proxy: EngineProxy, runtime: DockerRuntime,
        sessions: list[AsyncSession]) -> None:
    within = REFUSED_WITHIN_S if mode == "refuse" else HUNG_WITHIN_S
    box = await open_session(runtime, sessions)
    assert (await box.execute("kept = 41")).ok
    await box.upload("before.txt", b"written before the outage")

    proxy.cut(mode)
    # (a) The kernel is reached over ZMQ, not through the engine: cells go on.
    result, seconds = await timed(box.execute("kept + 1"))
    assert not isinstance(result, BaseException) and result.text == "42"
    assert seconds < 1.0

    # (b) Everything that needs the engine fails fast and says why — all at once, so
    # none of them waits behind another one's timeout.
    late = AsyncSession(runtime=runtime)
    sessions.append(late)
    outcomes = await asyncio.gather(
        timed(box.upload("during.txt", b"x")), timed(box.download("before.txt")),
        timed(box.list_files()), timed(box.delete_file("before.txt")), timed(late.start()))
    for what, (outcome, seconds) in zip(["upload", "download", "list_files", "delete_file",
                                         "start"], outcomes, strict=True):
        assert_engine_error(outcome, seconds, within, what)
    # A session that could not start left nothing on the host and is closed.
    assert late.state is SessionState.CLOSED and not late.run_dir.exists()
    assert box.state is SessionState.READY  # a refused file operation harms nothing

    # A restart in place is init's business, not the engine's: it works during the outage.
    outcome, seconds = await timed(box.restart())
    assert outcome is None, outcome
    assert seconds < KERNEL_START_WITHIN_S
    assert (await box.execute("'kept' in dir()")).text == "False"  # a fresh kernel

    # (c) The engine is back: the same session's files work again, new sessions start.
    proxy.restore()
    assert await box.download("before.txt") == b"written before the outage"
    await box.upload("after.txt", b"written after the outage")
    assert {f.path for f in await box.list_files()} == {"before.txt", "after.txt"}
    fresh = await open_session(runtime, sessions)
    assert (await fresh.execute("6 * 7")).text == "42"
    assert (await box.execute("1 + 1")).text == "2"


async def test_a_restart_that_must_replace_the_container_fails_clearly_then_recovers(
        engine: Any, proxy: EngineProxy, runtime: DockerRuntime,
        sessions: list[AsyncSession]) -> None:
    box = await open_session(runtime, sessions)
    old = box.container_id
    # agentbox-init stops answering (its socket is gone), so restart() falls back to
    # replacing the container — which needs the engine.
    (box.run_dir / "init.sock").unlink()
    proxy.cut("refuse")
    outcome, seconds = await timed(box.restart())
    assert isinstance(outcome, SessionLostError), outcome
    assert ENGINE_SAYS in str(outcome) and "could not be replaced" in str(outcome)
    assert seconds < REFUSED_WITHIN_S
    assert box.state is SessionState.DEAD
    assert [c.id for c in containers_of(engine, box)] == [old]  # not removed: unreachable

    proxy.restore()
    result = await box.execute("'back'")
    assert result.ok and result.text == "'back'" and result.kernel_restarted
    assert any("container" in note for note in result.notes), result.notes
    assert [c.id for c in containers_of(engine, box)] == [box.container_id] != [old]


async def test_close_during_an_outage_returns_at_once(
        engine: Any, proxy: EngineProxy, runtime: DockerRuntime,
        sessions: list[AsyncSession], caplog: pytest.LogCaptureFixture) -> None:
    box = await open_session(runtime, sessions)
    container = box.container_id
    assert container is not None
    proxy.cut("refuse")
    with caplog.at_level(logging.WARNING, logger="sandbox.session"):
        outcome, seconds = await timed(box.close())
    assert outcome is None and seconds < REFUSED_WITHIN_S
    assert box.state is SessionState.CLOSED and not box.run_dir.exists()
    assert any(ENGINE_SAYS in r.getMessage() and "not removed" in r.getMessage()
               for r in caplog.records), caplog.text
    # The container could not be removed, so it is still there...
    assert [c.id for c in containers_of(engine, box)] == [container]
    proxy.restore()
    await box.close()  # idempotent: a closed session does nothing more...
    assert [c.id for c in containers_of(engine, box)] == [container]
    # ...but the engine can remove it now (what a retry would do).
    await runtime.remove(container)
    assert containers_of(engine, box) == []


@pytest.mark.parametrize("lost_in", ["close", "start"])
async def test_what_an_outage_left_is_removed_once_the_engine_is_back(
        lost_in: str, engine: Any, proxy: EngineProxy, runtime: DockerRuntime,
        sessions: list[AsyncSession]) -> None:
    box = AsyncSession(runtime=runtime)
    sessions.append(box)
    try:
        if lost_in == "close":
            await box.start()
            proxy.cut("refuse")
            await box.close()
        else:
            proxy.cut("mute")  # the engine creates the container; its answer is lost
            outcome, seconds = await timed(box.start())
            assert_engine_error(outcome, seconds, HUNG_WITHIN_S, "start")
            # The failure below is kept (sys.last_value) with this frame until the end
            # of the run: it must not hold the exception, and with it a socket.
            del outcome
        proxy.restore()
        assert len(containers_of(engine, box)) == 1  # left behind by the outage
        with contextlib.suppress(SandboxError):
            # What the SessionManager's reaper runs on every pass.
            await sweep_orphans(runtime, box.run_dir.parent)
        assert containers_of(engine, box) == []
    finally:
        for c in containers_of(engine, box):
            c.remove(force=True)


async def test_a_manager_rides_out_an_outage(proxy: EngineProxy, runtime: DockerRuntime) -> None:
    """Pool refills and reaper passes fail quietly during the outage; create() fails
    fast with the engine's error; after it, create() and the pool work again."""
    config = ManagerConfig(pool_size=1, reaper_interval_s=0.2)
    async with SessionManager(config, runtime=runtime) as manager:
        deadline = time.monotonic() + 60
        while manager.pool_level < 1:
            assert time.monotonic() < deadline, "the pool did not fill"
            await asyncio.sleep(0.05)
        pooled = await manager.create()
        assert pooled.from_pool
        proxy.cut("refuse")
        # The pool is empty and cannot refill: a create is a cold start, refused at once.
        outcome, seconds = await timed(manager.create())
        assert_engine_error(outcome, seconds, REFUSED_WITHIN_S, "create")
        assert (await pooled.execute("'still running'")).ok
        await asyncio.sleep(1.0)  # a few refused refills and reaper passes
        assert manager.pool_level == 0
        proxy.restore()
        cold = await manager.create()
        assert (await cold.execute("1 + 1")).text == "2"
        # The pool's retry backs off (0.5 s doubling) but refills once the engine is back.
        deadline = time.monotonic() + 30
        while manager.pool_level < 1:
            assert time.monotonic() < deadline, "the pool did not refill after the outage"
            await asyncio.sleep(0.05)
        assert len(manager.list()) == 2
