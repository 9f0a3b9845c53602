"""A start that is cancelled (a client gone, a server shutting down, a task group
failing, a pool closing) leaves no container and no directory behind."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from sandbox import AsyncSession, SessionState
from sandbox._runtime.base import LABEL_SESSION, ContainerSpec
from sandbox._runtime.dockerd import DockerRuntime, connect

pytestmark = pytest.mark.usefixtures("engine")


class WatchedRuntime(DockerRuntime):
    """The Docker runtime, telling the test when the container exists."""

    def __init__(self) -> None:
        super().__init__()
        self.created = asyncio.Event()

    async def start(self, spec: ContainerSpec) -> str:
        container_id = await super().start(spec)
        self.created.set()
        return container_id


def containers_of(engine: Any, session: AsyncSession) -> list[Any]:
    return engine.containers.list(  # type: ignore[no-any-return]
        all=True, filters={"label": f"{LABEL_SESSION}={session.id}"})


async def settle(engine: Any, session: AsyncSession) -> list[Any]:
    """The session's containers once what the engine was still doing has landed."""
    await asyncio.sleep(1.5)
    return containers_of(engine, session)


async def cancel_start(runtime: WatchedRuntime, when: asyncio.Event) -> AsyncSession:
    """A session whose start() was cancelled once *when* was set."""
    session = AsyncSession(runtime=runtime)
    task = asyncio.create_task(session.start())
    await when.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return session


async def test_a_start_cancelled_while_the_kernel_comes_up_leaves_nothing(engine: Any) -> None:
    runtime = WatchedRuntime()
    try:
        session = await cancel_start(runtime, runtime.created)
        assert session.state is SessionState.CLOSED and not session.run_dir.exists()
        assert await settle(engine, session) == []
    finally:
        await runtime.close()


class SlowAnswer:
    """A docker client whose ``containers.run`` answers 0.5 s after the container runs
    (an engine slow to answer): a cancel lands after the engine did the work."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.running = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    @property
    def containers(self) -> Any:
        slow = self

        class Containers:
            def __getattr__(self, name: str) -> Any:
                return getattr(slow._client.containers, name)

            def run(self, **kwargs: Any) -> Any:
                container = slow._client.containers.run(**kwargs)
                slow.running.set()
                time.sleep(0.5)
                return container

        return Containers()


async def test_a_start_cancelled_while_the_engine_answers_leaves_nothing(engine: Any) -> None:
    client = SlowAnswer(connect())
    runtime = DockerRuntime(client)  # type: ignore[arg-type]
    session = AsyncSession(runtime=runtime)
    try:
        task = asyncio.create_task(session.start())
        while not client.running.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert session.state is SessionState.CLOSED and not session.run_dir.exists()
        assert await settle(engine, session) == []
    finally:
        for c in containers_of(engine, session):
            c.remove(force=True)
        client._client.close()
