"""The synchronous facade: a script that forgets to close its session still exits
promptly and leaves no container."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

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
        events = box.stream("for i in range(300_000): print('x' * 200, flush=True)",
                            timeout=120)
        for seen, _ in enumerate(events, 1):
            if seen % STREAM_BACKLOG == 0:
                time.sleep(0.1)  # the reader falls behind
                peak = max(peak, own_rss() - before)
            if seen >= 8 * STREAM_BACKLOG:
                break
        assert peak < 64 * 2**20, f"grew by {peak / 2**20:.0f} MiB"
        assert box.execute("1 + 1").text == "2"  # leaving the stream ended the cell
