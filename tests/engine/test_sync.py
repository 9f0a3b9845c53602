"""The synchronous facade: a script that forgets to close its session still exits
promptly and leaves no container."""

from __future__ import annotations

import subprocess
import sys

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
