"""No engine: clear errors at once, never a hang, nothing left on the host.

Run in a subprocess: docker-py leaks the socket of a failed connect, and this suite
treats every leaked resource as an error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import asyncio, json, time
from sandbox import AsyncSession, EngineUnavailableError
async def main():
    box = AsyncSession(session_id="s-noengine0000")
    t0 = time.monotonic()
    try:
        await box.start()
    except EngineUnavailableError as exc:
        print(json.dumps({"error": str(exc), "seconds": time.monotonic() - t0,
                          "run_dir_left": box.run_dir.exists(), "state": box.state.value}))
asyncio.run(main())
"""


def test_starting_without_an_engine_fails_fast_with_what_to_do(tmp_path: Path) -> None:
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock",
           "AGENTBOX_RUN_ROOT": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    outcome = json.loads(proc.stdout)
    assert "no Docker engine answers" in outcome["error"]
    assert "scripts/ensure-docker" in outcome["error"]
    assert outcome["seconds"] < 10
    assert outcome["run_dir_left"] is False and outcome["state"] == "closed"
    assert not (tmp_path / "s-noengine0000").exists()
