"""The library on uvloop (tests/uvloop/conftest.py runs these on it), the loop many host applications run (``uvicorn[standard]``
installs it and picks it by default).

A session under uvloop failed to start: the ZMTP protocol asserted that its transport
subclasses ``asyncio.Transport``, which uvloop's does not. These run the paths that touch
the loop's own machinery (Unix connections and back-pressure, the death watch, worker
threads, the large-message parse off the loop, timers) on a uvloop loop.
"""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from sandbox import AsyncSession, ManagerConfig, SessionManager, SessionState

pytestmark = pytest.mark.usefixtures("engine")


async def test_the_running_loop_is_uvloop() -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


async def test_cells_outputs_files_and_close_on_uvloop(engine: object) -> None:
    async with AsyncSession() as session:
        assert (await session.execute("1 + 1")).text == "2"
        shown = await session.execute(
            "from IPython.display import display, HTML\n"
            "display(HTML('<b>x</b>')); print('out')\n"
            "'x' * 400_000")  # a reply over the inline limit: parsed in a worker process
        assert shown.status == "ok" and shown.stdout == "out\n"
        assert [d.data["text/html"] for d in shown.displays if "text/html" in d.data] == ["<b>x</b>"]
        assert shown.text is not None and len(shown.text) > 400_000
        error = await session.execute("1 / 0")
        assert error.status == "error" and error.error is not None
        assert error.error.ename == "ZeroDivisionError"
        events = [e async for e in session.stream(
            "import time\nfor i in range(3): print(i, flush=True); time.sleep(0.2)")]
        assert "".join(getattr(e, "text", "") for e in events[:-1]) == "0\n1\n2\n"
        await session.upload("data/in.txt", b"hello")
        assert await session.download("data/in.txt") == b"hello"
        container = session.container_id
    assert session.state is SessionState.CLOSED
    assert not engine.containers.list(all=True, filters={"id": container})  # type: ignore[attr-defined]


async def test_timeouts_restarts_and_a_pool_on_uvloop() -> None:
    async with AsyncSession() as session:
        slept = await session.execute("import time; time.sleep(60)", timeout=1)
        assert slept.status == "timeout" and slept.timeout is not None
        assert slept.timeout.ended_by == "interrupt"
        stubborn = await session.execute(
            "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)",
            timeout=1)
        assert stubborn.status == "timeout" and stubborn.timeout is not None
        assert stubborn.timeout.ended_by in ("restart", "replace")
        await session.execute("kept = 7")
        await session.restart()
        assert (await session.execute("'kept' in dir()")).text == "False"
    async with SessionManager(ManagerConfig(pool_size=1)) as manager:
        first = await manager.create()
        assert (await first.execute("2 * 21")).text == "42"
