"""Issue 11, class 3 (and the box's half of class 4): every kind of output a box can
send is capped in what the host keeps and in what it sends live, exactly, and every
cut is said. Each attack is real kernel code under runc and runsc; the caps are
checked on the result the host assembled, and the host's memory on this process.

Reproduced on the old code: forged ``error`` messages were kept whole (about 120 MB
from one cell), every tiny display was kept, and a ``clear_output`` + ``print`` loop
(or updates of a display id no output has) sent events without end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from sandbox import (
    AsyncSession,
    ClearOutput,
    DisplayOutput,
    DisplayUpdate,
    ErrorOutput,
    ExecutionResult,
    SandboxConfig,
    StreamOutput,
)
from sandbox._outputs import output_size
from tests.security.conftest import own_rss

pytestmark = pytest.mark.asyncio(loop_scope="module")
MiB = 1 << 20
MAX_OUTPUT = 256 * 1024
MAX_OUTPUTS = 100
MAX_LIVE_EVENTS = 500
MAX_LIVE_BYTES = 1 * MiB
RSS_BOUND = 200 * MiB  # what one attack may add to this process (it sends 80 MB or more)
CAPS = {"max_output_bytes": MAX_OUTPUT, "max_outputs": MAX_OUTPUTS,
        "max_live_events": MAX_LIVE_EVENTS, "max_live_bytes": MAX_LIVE_BYTES}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def box(runtime: str) -> AsyncIterator[AsyncSession]:
    config = SandboxConfig(runtime=runtime, **CAPS)  # type: ignore[arg-type]
    async with AsyncSession(config) as session:
        yield session


async def attack(box: AsyncSession, code: str) -> tuple[ExecutionResult, list[Any], int]:
    """Run *code*, collecting every live event; the result, the events and how much
    this process grew."""
    rss0 = own_rss()
    events: list[Any] = []
    result: ExecutionResult | None = None
    async for item in box.stream(code, timeout=120):
        if isinstance(item, ExecutionResult):
            result = item
        else:
            events.append(item)
    assert result is not None and result.status == "ok", result
    return result, events, own_rss() - rss0


def assert_caps_hold(result: ExecutionResult) -> None:
    """The per-execution caps, exactly: stream text (markers included) and rich outputs
    (placeholders included) each within max_output_bytes, at most max_outputs."""
    stream = sum(output_size(o) for o in result.outputs if isinstance(o, StreamOutput))
    rich = sum(output_size(o) for o in result.outputs if not isinstance(o, StreamOutput))
    assert stream <= MAX_OUTPUT and rich <= MAX_OUTPUT, (stream, rich)
    assert len(result.outputs) <= MAX_OUTPUTS


def assert_live_caps_hold(events: list[Any]) -> None:
    sizes = [output_size(e.output) if isinstance(e, DisplayUpdate)
             else 0 if isinstance(e, ClearOutput) else output_size(e) for e in events]
    assert len(events) <= MAX_LIVE_EVENTS and sum(sizes) <= MAX_LIVE_BYTES


FORGED_ERRORS = """
k = get_ipython().kernel
parent = k.get_parent("shell")
for i in range(40):   # 40 x 2 MB of traceback: what the old code kept, whole
    k.session.send(k.iopub_socket, "error", {
        "ename": "E" * 2000, "evalue": "v" * 50_000, "traceback": ["t" * 10_000] * 200,
    }, parent=parent)
print("sent")
"""


async def test_forged_error_messages_are_capped_like_any_output(box: AsyncSession) -> None:
    result, events, grew = await attack(box, FORGED_ERRORS)
    assert_caps_hold(result)
    assert_live_caps_hold(events)
    errors = [o for o in result.outputs if isinstance(o, ErrorOutput)]
    assert errors and len(errors[0].ename) == 1000  # the fixed field caps apply first
    assert "more traceback lines" in errors[0].traceback[-1]  # ...and the cut is said
    assert result.truncated and result.stdout.startswith("sent")
    assert any("output truncated" in n for n in result.notes), result.notes
    assert any("output(s) not kept" in n for n in result.notes), result.notes
    assert grew < RSS_BOUND, f"this process grew by {grew / MiB:.0f} MiB"


TINY_DISPLAYS = """
from IPython.display import publish_display_data
for i in range(2000):
    publish_display_data({} if i % 2 else {'text/plain': '.'})
"""


async def test_thousands_of_tiny_displays_keep_at_most_max_outputs(box: AsyncSession) -> None:
    result, events, _ = await attack(box, TINY_DISPLAYS)
    assert_caps_hold(result)
    assert len(result.outputs) == MAX_OUTPUTS  # exactly the cap, not one more
    assert all(isinstance(o, DisplayOutput) for o in result.outputs)
    assert result.truncated
    assert any("output(s) not kept: over the limit of 100 outputs" in n
               for n in result.notes), result.notes
    # The live feed sent what was kept, and stopped at the cap too.
    assert len([e for e in events if isinstance(e, DisplayOutput)]) == MAX_OUTPUTS


CLEAR_AND_PRINT = """
from IPython.display import clear_output
for n in range(3000):   # each turn publishes two messages: 6,000, far more than the cap
    clear_output(wait=True)
    print('step', n)
print('steps', n + 1)
"""


async def test_a_clear_and_print_loop_stops_going_live_at_the_live_cap(
        box: AsyncSession) -> None:
    result, events, _ = await attack(box, CLEAR_AND_PRINT)
    assert len(events) == MAX_LIVE_EVENTS  # exactly the cap: 6,000 were published
    assert_live_caps_hold(events)
    assert any("live output stopped" in n for n in result.notes), result.notes
    assert result.stdout.startswith("step ") and "steps" in result.stdout  # kept: the last
    assert_caps_hold(result)


UNKNOWN_DISPLAY_UPDATES = """
from IPython.display import update_display
for i in range(100):   # ids no output of this cell has: nothing is kept, all goes live
    update_display({'text/plain': 'x' * 200_000}, display_id='nowhere', raw=True)
for i in range(50):    # larger than a kept display may be: a placeholder at most
    update_display({'text/plain': 'y' * 400_000}, display_id='elsewhere', raw=True)
"""


async def test_updates_of_unknown_displays_are_bounded_live_and_not_kept(
        box: AsyncSession) -> None:
    result, events, _ = await attack(box, UNKNOWN_DISPLAY_UPDATES)
    assert result.outputs == []
    assert_live_caps_hold(events)
    assert 0 < len(events) < 10  # 1 MiB of live budget: five 200 KB updates
    assert all(isinstance(e, DisplayUpdate) and output_size(e.output) <= MAX_OUTPUT
               for e in events)
    assert any("live output stopped" in n for n in result.notes), result.notes


async def test_after_the_attacks_a_normal_cell_is_whole(box: AsyncSession) -> None:
    result = await box.execute("print('fine'); 6 * 7", timeout=30)
    assert result.status == "ok" and result.stdout == "fine\n" and result.text == "42"
    assert not result.truncated and result.notes == []
