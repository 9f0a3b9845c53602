"""The synchronous facade: a script that forgets to close its session still exits
promptly and leaves no container."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time

import pytest

from sandbox import ExecutionResult

pytestmark = pytest.mark.usefixtures("engine")

FORGETFUL = """
from sandbox import Session
box = Session().start()
print(box.execute("1 + 1").text, box.info.container_id, flush=True)
"""


def test_a_session_left_open_is_closed_at_exit(engine: object) -> None:
    proc = subprocess.run([sys.executable, "-c", FORGETFUL], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    value, container_id = proc.stdout.split()
    assert value == "2"
    assert not engine.containers.list(all=True, filters={"id": container_id})  # type: ignore[attr-defined]


def test_a_slow_reader_of_a_sync_stream_does_not_grow_the_process() -> None:
    # The cell prints far more than the reader takes: at most STREAM_BACKLOG events wait
    # for the reading thread, the rest stays behind in the session's own bounded queues.
    from sandbox import Session
    from sandbox._sync import STREAM_BACKLOG
    from tests.security.conftest import own_rss

    with Session() as box:
        before, peak = own_rss(), 0
        stream = box.stream("for i in range(300_000): print('x' * 200, flush=True)",
                            timeout=120)
        with contextlib.closing(stream) as events:
            for seen, _ in enumerate(events, 1):
                if seen % STREAM_BACKLOG == 0:
                    time.sleep(0.1)  # the reader falls behind
                    peak = max(peak, own_rss() - before)
                if seen >= 8 * STREAM_BACKLOG:
                    break
        assert peak < 64 * 2**20, f"grew by {peak / 2**20:.0f} MiB"
        assert box.execute("1 + 1").text == "2"  # closing the stream ended the cell


def test_a_sync_stream_left_unclosed_stops_going_live_and_the_cell_ends(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A reader that leaves the loop but keeps the iterator: after STREAM_STALL_S it gets
    # no more live events, the cell runs to its end, and the session is free again.
    from sandbox import Session, _sync

    monkeypatch.setattr(_sync, "STREAM_STALL_S", 0.5)
    with Session() as box:
        events = box.stream("import time\nfor i in range(400): print(i, flush=True)\n"
                            "time.sleep(1)\n'done'", timeout=60)
        assert next(events) is not None  # then nothing more is read
        t0 = time.monotonic()
        assert box.execute("1 + 1", timeout=60).text == "2"
        assert time.monotonic() - t0 < 30
        rest = list(events)
        result = rest[-1]
        assert isinstance(result, ExecutionResult) and result.status == "ok"
        assert any("not delivered" in n for n in result.notes), result.notes
        assert "399" in result.stdout  # the kept outputs are whole
