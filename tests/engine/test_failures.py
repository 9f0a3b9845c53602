"""Timeouts that really stop work, kernels that die, containers that vanish."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from sandbox import AsyncSession, SandboxConfig, SessionState

pytestmark = pytest.mark.usefixtures("engine")

GRACE = 1.0


def config(**kw: object) -> SandboxConfig:
    return SandboxConfig(interrupt_grace_s=GRACE, **kw)  # type: ignore[arg-type]


async def test_timeout_interrupts_and_keeps_state() -> None:
    async with AsyncSession(config()) as box:
        await box.execute("kept = 41")
        result = await box.execute("while True: pass", timeout=1)
        assert result.status == "timeout"
        assert result.timeout is not None and result.timeout.ended_by == "interrupt"
        assert result.timeout.state_lost is False
        assert result.error is not None and result.error.ename == "KeyboardInterrupt"
        assert (await box.execute("kept + 1")).text == "42"


async def test_timeout_on_a_loop_ignoring_sigint_restarts_the_kernel_and_keeps_files() -> None:
    async with AsyncSession(config()) as box:
        await box.execute("lost = 1\nopen('notes.txt', 'w').write('still here')")
        t0 = time.monotonic()
        result = await box.execute(
            "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass",
            timeout=1)
        elapsed = time.monotonic() - t0
        assert result.status == "timeout"
        assert result.timeout is not None and result.timeout.ended_by == "restart"
        assert result.timeout.state_lost and not result.timeout.files_lost
        assert elapsed < 1 + GRACE + 10  # timeout + grace + restart time
        after = await box.execute("print(open('notes.txt').read()); 'lost' in dir()")
        assert after.stdout == "still here\n" and after.text == "False"


async def test_timeout_on_a_c_loop_holding_the_gil() -> None:
    async with AsyncSession(config()) as box:
        # sum() over itertools.repeat runs entirely in C and never checks for signals.
        result = await box.execute("import itertools\nsum(itertools.repeat(1, 10**12))", timeout=1)
        assert result.status == "timeout" and result.timeout is not None
        assert result.timeout.ended_by == "restart"
        assert (await box.execute("1 + 1")).text == "2"


@pytest.mark.parametrize(("code", "exit_code", "signum"), [
    ("import os; os._exit(7)", 7, None),
    ("import ctypes; ctypes.string_at(0)", None, signal.SIGSEGV),
])
async def test_kernel_death_is_reported_and_the_session_goes_on(
        code: str, exit_code: int | None, signum: int | None) -> None:
    async with AsyncSession(config()) as box:
        t0 = time.monotonic()
        result = await box.execute(code, timeout=30)
        assert time.monotonic() - t0 < 3  # noticed at once, not at the timeout
        assert result.status == "died" and result.death is not None
        assert result.death.exit_code == exit_code and result.death.signal == signum
        assert box.state is SessionState.DEAD
        after = await box.execute("'alive'")
        assert after.ok and after.text == "'alive'" and after.kernel_restarted
        assert any("variables from earlier cells are gone" in n for n in after.notes)


async def test_out_of_memory_is_reported_as_such() -> None:
    async with AsyncSession(config(memory_mb=256)) as box:
        result = await box.execute("blocks = []\nwhile True: blocks.append(bytearray(16 * 2**20))",
                                   timeout=60)
        assert result.status == "died" and result.death is not None
        assert result.death.oom_killed, result.death
        assert "out of memory" in result.death.reason
        assert (await box.execute("sum(range(10))")).text == "45"


async def test_fork_bomb_is_contained_and_the_session_recovers() -> None:
    async with AsyncSession(config(pids=64)) as box:
        result = await box.execute(
            "import os\n"
            "while True:\n"
            "    try:\n"
            "        os.fork()\n"
            "    except OSError:\n"
            "        pass\n", timeout=3)
        assert result.status in ("timeout", "died")
        after = await box.execute(
            "import os\nlen([p for p in os.listdir('/proc') if p.isdigit()])", timeout=30)
        assert after.ok, after
        assert int(after.text or "99") <= 3  # init and the fresh kernel: the bomb is gone


async def test_orphaned_double_forked_children_are_reaped() -> None:
    async with AsyncSession(config()) as box:
        await box.execute(
            "import os, time\n"
            "for _ in range(5):\n"
            "    if os.fork() == 0:\n"
            "        if os.fork() == 0:\n"
            "            os._exit(0)\n"
            "        os._exit(0)\n"
            "    os.wait()\n"
            "time.sleep(0.5)")
        zombies = await box.execute(
            "import os\n"
            "[p for p in os.listdir('/proc') if p.isdigit() and\n"
            " open(f'/proc/{p}/stat').read().split(')')[1].split()[0] == 'Z']")
        assert zombies.text == "[]"


async def test_container_killed_behind_the_managers_back(engine: object) -> None:
    async with AsyncSession(config()) as box:
        await box.execute("x = 1")
        engine.containers.get(box.container_id).kill()  # type: ignore[attr-defined]
        for _ in range(100):
            if box.state is SessionState.DEAD:
                break
            await asyncio.sleep(0.05)
        assert box.state is SessionState.DEAD
        assert box.death is not None and box.death.container_gone
        result = await box.execute("'new container'")
        assert result.ok and result.kernel_restarted
        assert any("files from before are gone" in n for n in result.notes)


async def test_kill_during_a_running_cell_returns_died_not_a_hang(engine: object) -> None:
    async with AsyncSession(config()) as box:
        cid = box.container_id
        task = asyncio.create_task(box.execute("import time; time.sleep(30)", timeout=60))
        await asyncio.sleep(0.5)
        engine.containers.get(cid).kill()  # type: ignore[attr-defined]
        result = await asyncio.wait_for(task, 10)
        assert result.status == "died" and result.death is not None
        assert result.death.container_gone


async def test_explicit_restart_keeps_files_and_drops_variables() -> None:
    async with AsyncSession(config()) as box:
        await box.execute("v = 5\nopen('f.txt', 'w').write('f')")
        await box.restart()
        result = await box.execute("import os; (os.path.exists('f.txt'), 'v' in dir())")
        assert result.text == "(True, False)"


async def test_interrupt_from_another_task() -> None:
    async with AsyncSession(config()) as box:
        task = asyncio.create_task(box.execute("import time; time.sleep(30)", timeout=60))
        await asyncio.sleep(0.5)
        await box.interrupt()
        result = await asyncio.wait_for(task, 10)
        assert result.status == "error" and result.error is not None
        assert result.error.ename == "KeyboardInterrupt"


async def test_each_kernel_gets_a_fresh_key() -> None:
    async with AsyncSession(config()) as box:
        read_key = "import json, glob; json.load(open(sorted(glob.glob('/run/kernel/kernel-*.json'))[-1]))['key']"
        first = (await box.execute(read_key)).text
        await box.restart()
        second = (await box.execute(read_key)).text
        async with AsyncSession(config()) as other:
            third = (await other.execute(read_key)).text
    assert first and second and third
    assert len({first, second, third}) == 3
    assert len(first.strip("'")) == 64  # 256-bit hex
