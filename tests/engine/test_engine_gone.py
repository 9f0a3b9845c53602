"""No engine: clear errors at once, never a hang."""

from __future__ import annotations

import time

import docker
import pytest

from sandbox import AsyncSession, EngineUnavailableError
from sandbox._runtime.docker import DockerRuntime


# docker-py's unix-socket adapter leaks the socket of a failed connect (its bug, not ours).
@pytest.mark.filterwarnings("ignore::ResourceWarning",
                            "ignore::pytest.PytestUnraisableExceptionWarning")
async def test_starting_without_an_engine_fails_fast_with_what_to_do(tmp_path: object) -> None:
    dead = docker.DockerClient(base_url="unix:///nonexistent/docker.sock", version="1.41", timeout=5)
    box = AsyncSession(runtime=DockerRuntime(dead), session_id="s-noengine0000")
    t0 = time.monotonic()
    with pytest.raises(EngineUnavailableError, match="does not answer"):
        await box.start()
    assert time.monotonic() - t0 < 10
    assert not box.run_dir.exists()  # nothing left behind on the host
    dead.close()
