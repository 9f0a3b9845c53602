"""The cell loop (sandbox/_cell.py) without an engine, the way nbclient tests its own:
a scripted queue of (channel, message) pairs stands for the kernel, and a fake box
records the interrupt / restart / replace calls the escalation ladder makes (and can
make the "kernel" answer them). The assertions are what a user sees: the result's
status, outputs, TimeoutInfo.ended_by, KernelDeath and notes, and the calls in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from sandbox._cell import CellLimits, CellRun, abandon
from sandbox._exceptions import SandboxError
from sandbox._models import ErrorOutput, ExecutionResult, KernelDeath, StreamOutput
from sandbox._outputs import Event, OutputAssembler

Item = tuple[str, dict[str, Any]]
LIMIT_S = 0.2
GRACE_S = 0.1


def message(kind: str, content: dict[str, Any]) -> dict[str, Any]:
    return {"header": {"msg_type": kind, "msg_id": f"k-{kind}"},
            "parent_header": {"msg_id": "cell-1"}, "metadata": {}, "content": content,
            "buffers": []}


def status(state: str) -> Item:
    return "iopub", message("status", {"execution_state": state})


def stdout(text: str) -> Item:
    return "iopub", message("stream", {"name": "stdout", "text": text})


def error(ename: str = "ZeroDivisionError", evalue: str = "division by zero") -> Item:
    return "iopub", message("error", {"ename": ename, "evalue": evalue,
                                      "traceback": [f"{ename}: {evalue}"]})


def reply(state: str = "ok", count: int = 1) -> Item:
    return "shell", message("execute_reply", {"status": state, "execution_count": count})


def cell(*outputs: Item, state: str = "ok", count: int = 1) -> list[Item]:
    """What a kernel sends for a cell: busy, its outputs, the reply, idle."""
    return [status("busy"), *outputs, reply(state, count), status("idle")]


class Script:
    """The kernel's side: messages queued now, or when the box is asked for something.
    ``get`` blocks when nothing is queued, so deadlines pass as they would."""

    def __init__(self, *items: Item) -> None:
        self.queue: asyncio.Queue[Item] = asyncio.Queue()
        self.push(*items)

    def push(self, *items: Item) -> None:
        for item in items:
            self.queue.put_nowait(item)

    async def get(self) -> Item:
        return await self.queue.get()


class FakeBox:
    """Records the ladder's calls; ``on`` maps a call to what the kernel then sends."""

    def __init__(self, script: Script, *, restart_ok: bool = True,
                 reconnect_ok: bool = True, on: dict[str, list[Item]] | None = None) -> None:
        self.script = script
        self.restart_ok = restart_ok
        self.reconnect_ok = reconnect_ok
        self.on = on or {}
        self.calls: list[str] = []
        self.lock = asyncio.Lock()

    def hold(self) -> asyncio.Lock:
        return self.lock

    def _record(self, name: str) -> None:
        if name in ("restart", "replace"):
            assert self.lock.locked(), f"{name} outside the session's life lock"
        self.calls.append(name)
        self.script.push(*self.on.get(name, []))

    async def interrupt(self) -> None:
        self._record("interrupt")

    async def restart(self) -> bool:
        self._record("restart")
        return self.restart_ok

    async def replace(self) -> None:
        self._record("replace")

    async def reconnect_iopub(self) -> None:
        self._record("reconnect_iopub")
        if not self.reconnect_ok:
            raise SandboxError("no IOPub")


def make_run(script: Script, box: FakeBox, *, limit_s: float = LIMIT_S,
             notes: list[str] | None = None) -> CellRun:
    limits = CellLimits(limit_s=limit_s, interrupt_grace_s=GRACE_S, max_message_bytes=8 << 20,
                        iopub_grace_s=GRACE_S)
    return CellRun(script, box, limits, OutputAssembler(1 << 20), notes)


async def run_cell(script: Script, box: FakeBox, **kwargs: Any
                   ) -> tuple[list[Event], ExecutionResult]:
    run = make_run(script, box, **kwargs)
    loop = asyncio.get_running_loop()
    started = loop.time()
    events = [event async for event in run.events()]
    result = await run.result(started=started)
    assert loop.time() - started < 5, "the loop did not end by its deadlines"
    return events, result


async def test_ok_cell_gives_its_outputs_and_no_ladder() -> None:
    script = Script(*cell(stdout("hello\n"), count=3))
    box = FakeBox(script)
    events, result = await run_cell(script, box)
    assert result.status == "ok" and result.execution_count == 3
    assert result.stdout == "hello\n" and len(events) == 1
    assert result.timeout is None and result.death is None and not result.truncated
    assert result.notes == [] and box.calls == []


async def test_error_cell_is_status_error_with_the_exception() -> None:
    script = Script(*cell(stdout("before\n"), error(), state="error"))
    box = FakeBox(script)
    _, result = await run_cell(script, box)
    assert result.status == "error" and box.calls == []
    assert isinstance(result.error, ErrorOutput) and result.error.ename == "ZeroDivisionError"
    assert result.stdout == "before\n"


async def test_aborted_reply_says_so() -> None:
    script = Script(*cell(state="aborted"))
    _, result = await run_cell(script, FakeBox(script))
    assert result.status == "error"
    assert result.notes == ["the kernel aborted this execution"]


async def test_timeout_ended_by_interrupt_keeps_state() -> None:
    script = Script(status("busy"), stdout("working\n"))
    interrupted = [error("KeyboardInterrupt", ""), reply("error"), status("idle")]
    box = FakeBox(script, on={"interrupt": interrupted})
    _, result = await run_cell(script, box)
    assert box.calls == ["interrupt"]
    assert result.status == "timeout" and result.timeout is not None
    assert result.timeout.ended_by == "interrupt" and not result.timeout.state_lost
    assert result.timeout.limit_s == LIMIT_S
    assert result.stdout == "working\n"
    assert result.error is not None and result.error.ename == "KeyboardInterrupt"
    assert result.notes[-1].endswith("it was interrupted (KeyboardInterrupt); kernel "
                                     "state is kept")


async def test_timeout_ignoring_the_interrupt_restarts_the_kernel() -> None:
    script = Script(status("busy"))
    box = FakeBox(script)  # the kernel ignores SIGINT: nothing comes back
    _, result = await run_cell(script, box)
    assert box.calls == ["interrupt", "restart"]
    assert result.status == "timeout" and result.timeout is not None
    assert result.timeout.ended_by == "restart"
    assert result.timeout.state_lost and not result.timeout.files_lost
    assert "the kernel was restarted: variables are gone, files are kept" in result.notes[-1]


async def test_timeout_with_init_gone_replaces_the_container() -> None:
    script = Script(status("busy"))
    box = FakeBox(script, restart_ok=False)
    _, result = await run_cell(script, box)
    assert box.calls == ["interrupt", "restart", "replace"]
    assert result.status == "timeout" and result.timeout is not None
    assert result.timeout.ended_by == "replace"
    assert result.timeout.state_lost and result.timeout.files_lost
    assert "it was replaced: variables and files are gone" in result.notes[-1]


async def test_kernel_death_mid_cell() -> None:
    death = KernelDeath(reason="out of memory: the kernel was killed for exceeding the "
                               "512 MiB limit", signal=9, oom_killed=True)
    script = Script(status("busy"), stdout("allocating\n"), ("died", {"death": death}))
    box = FakeBox(script)
    _, result = await run_cell(script, box)
    assert result.status == "died" and result.death == death
    assert result.stdout == "allocating\n" and result.timeout is None
    assert box.calls == []


async def test_death_without_a_reason_still_says_died() -> None:
    script = Script(status("busy"), ("died", {}))
    _, result = await run_cell(script, FakeBox(script))
    assert result.status == "died" and result.death is not None
    assert result.death.reason == "the kernel stopped"


async def test_death_after_the_interrupt_is_no_timeout() -> None:
    script = Script(status("busy"))
    death = KernelDeath(reason="the kernel was killed by SIGINT", signal=2)
    box = FakeBox(script, on={"interrupt": [("died", {"death": death})]})
    _, result = await run_cell(script, box)
    assert box.calls == ["interrupt"]
    assert result.status == "died" and result.death == death and result.timeout is None


async def test_lost_idle_is_reported_and_iopub_reconnected() -> None:
    # The reply came, the final 'idle' never does (the host ended IOPub over a cap).
    script = Script(status("busy"), stdout("part\n"), reply("ok"))
    box = FakeBox(script)
    _, result = await run_cell(script, box)
    assert result.status == "ok" and result.truncated
    assert result.stdout == "part\n"
    assert box.calls == ["reconnect_iopub"]
    assert any("final 'idle' status did not arrive" in note for note in result.notes)


async def test_lost_iopub_that_cannot_be_reconnected_restarts_the_kernel() -> None:
    script = Script(status("busy"), reply("ok"))
    box = FakeBox(script, reconnect_ok=False)
    _, result = await run_cell(script, box)
    assert result.status == "ok" and result.truncated
    assert box.calls == ["reconnect_iopub", "restart"]
    assert result.notes[-1] == "IOPub could not be reconnected; the kernel was restarted"


async def test_iopub_gap_dropped_message_is_noted_and_the_cell_completes() -> None:
    dropped = ("dropped", {"channel": "iopub", "reason": "a message of 9 MiB (cap 8 MiB)"})
    script = Script(status("busy"), stdout("a\n"), dropped, dropped, stdout("b\n"),
                    reply("ok"), status("idle"))
    box = FakeBox(script)
    _, result = await run_cell(script, box)
    assert result.status == "ok" and result.truncated and box.calls == []
    assert result.stdout == "a\nb\n"
    assert result.notes == ["a kernel message was dropped unread: a message of 9 MiB (cap 8 "
                            "MiB); max_message_bytes is 8 MiB"]


async def test_idle_grace_counts_from_the_latest_iopub_message() -> None:
    # After the reply, IOPub keeps delivering (slower than the grace in total, each
    # message within it): nothing is declared lost.
    script = Script(status("busy"), reply("ok"))
    box = FakeBox(script)
    run = make_run(script, box, limit_s=5.0)

    async def trickle() -> None:
        for _ in range(4):
            await asyncio.sleep(GRACE_S / 2)
            script.push(("parsing", {}))
        script.push(stdout("late\n"), status("idle"))

    feeder = asyncio.create_task(trickle())
    events = [event async for event in run.events()]
    await feeder
    result = await run.result(started=0.0)
    assert result.status == "ok" and not result.truncated
    assert [e.text for e in events if isinstance(e, StreamOutput)] == ["late\n"]
    assert box.calls == []


async def test_earlier_notes_come_first() -> None:
    script = Script(*cell())
    _, result = await run_cell(script, FakeBox(script), notes=["the previous kernel died"])
    assert result.notes == ["the previous kernel died"]


async def test_abandoned_cell_is_interrupted_and_awaited() -> None:
    script = Script(status("busy"), stdout("x\n"))
    box = FakeBox(script, on={"interrupt": [reply("error"), status("idle")]})
    run = make_run(script, box, limit_s=30.0)
    events = run.events()
    async with contextlib.aclosing(events):
        await events.__anext__()  # the caller reads one output and leaves
    assert run.abandoned
    await abandon(run, GRACE_S)
    assert box.calls == ["interrupt"] and run.reply is not None


async def test_abandoned_cell_that_ignores_the_interrupt_gets_a_fresh_kernel() -> None:
    script = Script(status("busy"), stdout("x\n"))
    box = FakeBox(script, restart_ok=False)
    run = make_run(script, box, limit_s=30.0)
    events = run.events()
    async with contextlib.aclosing(events):
        await events.__anext__()
    await abandon(run, GRACE_S)
    assert box.calls == ["interrupt", "restart", "replace"]


async def test_a_finished_cell_is_not_abandoned() -> None:
    script = Script(*cell())
    run = make_run(script, FakeBox(script))
    async for _ in run.events():
        pass
    assert not run.abandoned


@pytest.mark.parametrize("restart_ok", [True, False])
async def test_ladder_runs_restart_and_replace_under_one_hold(restart_ok: bool) -> None:
    script = Script(status("busy"))
    box = FakeBox(script, restart_ok=restart_ok)
    _, result = await run_cell(script, box)  # FakeBox asserts the lock is held
    assert result.timeout is not None
    assert result.timeout.ended_by == ("restart" if restart_ok else "replace")
    assert not box.lock.locked()
