"""`SandboxTool` through langchain_core's tool interface (no model), against a real engine."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.messages import ToolMessage

from sandbox import AsyncSession, ExecutionResult, Session
from sandbox.integrations.langchain import SandboxTool

pytestmark = pytest.mark.usefixtures("engine")

PNG = b"\x89PNG\r\n\x1a\n"


def container_exists(engine: Any, container_id: str) -> bool:
    return bool(engine.containers.list(all=True, filters={"id": container_id}))


@pytest.fixture
def tool(engine: Any) -> Iterator[SandboxTool]:
    with SandboxTool() as t:
        yield t
        box = t.session
        container = box.info.container_id if box is not None else None
    assert t.session is None
    assert container is None or not container_exists(engine, container)


def test_invoke_keeps_state_and_returns_text(tool: SandboxTool) -> None:
    assert tool.name == "python_sandbox" and tool.session is None  # started on first use
    assert set(tool.args) == {"code", "timeout_s"}
    assert tool.invoke({"code": "x = 41\nprint('set')"}) == "set"
    assert tool.invoke({"code": "x + 1"}) == "42"
    table = tool.invoke({"code": "import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['u', 'v']})"})
    assert table.splitlines()[0] == "DataFrame: 2 rows × 2 columns"
    assert [c.strip() for c in table.splitlines()[1].strip("|").split("|")] == ["", "a", "b"]


def test_errors_come_back_as_text(tool: SandboxTool) -> None:
    out = tool.invoke({"code": "1 / 0"})
    assert isinstance(out, str) and "ZeroDivisionError: division by zero" in out
    stuck = tool.invoke({"code": "while True: pass", "timeout_s": 1})
    assert "[timeout]" in stuck
    assert tool.invoke({"code": "'still' + ' here'"}) == "'still here'"
    # A sandbox failure (not the code's) is a ToolException, handled as text too.
    msg = tool.invoke({"type": "tool_call", "id": "9", "name": tool.name,
                       "args": {"code": "a\0b"}})
    assert isinstance(msg, ToolMessage) and msg.status == "error" and "NUL byte" in msg.content
    bad = tool.invoke({"code": "1", "timeout_s": -1})
    assert bad.startswith("invalid input:") and "greater than 0" in bad


def test_tool_call_returns_the_execution_result_as_artifact(tool: SandboxTool) -> None:
    msg = tool.invoke({"type": "tool_call", "id": "1", "name": tool.name, "args": {
        "code": "import matplotlib.pyplot as plt\nplt.plot([1, 4, 2])\nplt.show()"}})
    assert isinstance(msg, ToolMessage) and msg.tool_call_id == "1" and msg.status == "success"
    result = msg.artifact
    assert isinstance(result, ExecutionResult) and result.status == "ok"
    ((mime, blob),) = result.images
    assert mime == "image/png" and blob.startswith(PNG)
    assert msg.content == f"[image: image/png, {len(blob)} bytes]"


def test_sync_started_sandbox_is_shared_with_ainvoke(tool: SandboxTool) -> None:
    tool.invoke({"code": "shared = 'from invoke'"})
    assert isinstance(tool.session, Session)
    assert asyncio.run(tool.ainvoke({"code": "shared"})) == "'from invoke'"


async def test_ainvoke_keeps_state_and_aclose_removes_the_sandbox(engine: Any) -> None:
    async with SandboxTool() as tool:
        first, second = await asyncio.gather(tool.ainvoke({"code": "import time; time.sleep(0.2); y = 2"}),
                                             tool.ainvoke({"code": "z = 3"}))
        assert (first, second) == ("[no output]", "[no output]")  # one sandbox, started once
        assert await tool.ainvoke({"code": "y * 21 + z - 3"}) == "42"
        msg = await tool.ainvoke({"type": "tool_call", "id": "2", "name": tool.name,
                                  "args": {"code": "1 / 0"}})
        assert isinstance(msg.artifact, ExecutionResult) and msg.artifact.status == "error"
        assert "ZeroDivisionError" in msg.content
        box = tool.session
        assert isinstance(box, AsyncSession)
        container = box.info.container_id
        # invoke from another thread runs on this (the owning) loop.
        assert await asyncio.to_thread(tool.invoke, {"code": "y"}) == "2"
    assert tool.session is None and not container_exists(engine, container)


def tool_call(tool: SandboxTool, code: str, **args: Any) -> ToolMessage:
    msg = tool.invoke({"type": "tool_call", "id": "c", "name": tool.name,
                       "args": {"code": code, **args}})
    assert isinstance(msg, ToolMessage)
    return msg


def test_a_failed_cell_is_a_tool_message_with_status_error(tool: SandboxTool) -> None:
    # As MCP's isError: a graph can route on the status, not on the text.
    assert tool_call(tool, "1 + 1").status == "success"
    failed = tool_call(tool, "1 / 0")
    assert failed.status == "error" and "ZeroDivisionError" in failed.content
    assert isinstance(failed.artifact, ExecutionResult) and failed.artifact.status == "error"
    stuck = tool_call(tool, "while True: pass", timeout_s=1)
    assert stuck.status == "error" and stuck.artifact.status == "timeout"
    assert tool_call(tool, "'fine'").status == "success"  # the next clean cell is not marked
    plain = SandboxTool(response_format="content")  # no artifact: the status still says it
    try:
        msg = tool_call(plain, "raise ValueError('no')")
        assert msg.status == "error" and "ValueError: no" in msg.content and msg.artifact is None
        assert tool_call(plain, "2").content == "2"
    finally:
        plain.close()


async def test_ainvoke_marks_a_failed_cell_too() -> None:
    async with SandboxTool() as tool:
        msg = await tool.ainvoke({"type": "tool_call", "id": "a", "name": tool.name,
                                  "args": {"code": "import os; os._exit(3)"}})
        assert isinstance(msg, ToolMessage) and msg.status == "error"
        assert msg.artifact.status == "died"
        ok = await tool.ainvoke({"type": "tool_call", "id": "b", "name": tool.name,
                                 "args": {"code": "1"}})
        assert ok.status == "success"


def round_trips(result: ExecutionResult) -> None:
    data = result.to_dict()
    back = ExecutionResult.from_dict(json.loads(json.dumps(data)))  # through plain JSON
    assert back.to_dict() == data
    assert (back.status, back.images, back.text, back.stdout, back.stderr) == \
        (result.status, result.images, result.text, result.stdout, result.stderr)
    assert back.timeout == result.timeout and back.death == result.death
    assert [type(o) for o in back.outputs] == [type(o) for o in result.outputs]


def test_every_result_kind_survives_a_checkpoint(tool: SandboxTool) -> None:
    cells = {
        "ok": "import matplotlib.pyplot as plt, pandas as pd\nprint('out')\n"
              "import sys; print('err', file=sys.stderr)\nplt.plot([1, 2]); plt.show()\n"
              "display(pd.DataFrame({'a': [1]}))\n6 * 7",
        "error": "print('before')\n1 / 0",
        "timeout": "while True: pass",
        "died": "import os; os._exit(3)",
    }
    for status, code in cells.items():
        # 2 s stops the loop; the first cell's imports may take longer on a loaded machine.
        msg = tool_call(tool, code, timeout_s=2 if status == "timeout" else 60)
        assert isinstance(msg.artifact, ExecutionResult) and msg.artifact.status == status
        round_trips(msg.artifact)
    # What a real kernel rarely gives in one cell: every optional field set.
    from sandbox._models import DisplayOutput, ErrorOutput, KernelDeath, StreamOutput, TimeoutInfo

    round_trips(ExecutionResult(
        status="timeout", execution_count=7, duration_s=1.234567, truncated=True,
        outputs=[StreamOutput("stdout", "a"), StreamOutput("stderr", "b"),
                 DisplayOutput("display_data", {"text/plain": "d"}, {"m": 1}, display_id="i"),
                 DisplayOutput("execute_result", {"text/plain": "1"}, execution_count=7),
                 ErrorOutput("E", "v", ["tb"])],
        timeout=TimeoutInfo(2.5, "replace", state_lost=True, files_lost=True),
        death=KernelDeath("oom", exit_code=137, signal=9, oom_killed=True),
        kernel_restarted=True, notes=["cut"]))
    with pytest.raises(ValueError, match="unknown output type"):
        ExecutionResult.from_dict({"status": "ok", "outputs": [{"type": "nope"}]})


def test_the_old_import_path_still_works() -> None:
    """README documented `from sandbox.langchain_tool import SandboxTool`."""
    from sandbox import langchain_tool

    assert langchain_tool.SandboxTool is SandboxTool
