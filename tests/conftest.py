"""Shared fixtures. Tests that need the Docker engine use the ``engine`` fixture:
when no engine answers or the kernel image is missing they FAIL with what to do,
never skip (CI must not go green without running them)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Every session these tests start keeps its run directory here, so the leak
# check at the end can see everything this test run left on the host.
RUN_ROOT = Path(tempfile.gettempdir()) / f"agentbox-test-{os.getpid()}"
os.environ["AGENTBOX_RUN_ROOT"] = str(RUN_ROOT)


@pytest.fixture(scope="session")
def engine() -> Iterator[object]:
    from sandbox._exceptions import EngineUnavailableError
    from sandbox._image import image_tag
    from sandbox._runtime.base import LABEL_OWNER_PID
    from sandbox._runtime.dockerd import connect

    try:
        client = connect()
    except EngineUnavailableError as exc:
        pytest.fail(f"these tests need a Docker engine: {exc}", pytrace=False)
    tag = image_tag()
    if not client.images.list(name=tag):
        pytest.fail(f"kernel image {tag} is not built: run `make setup` "
                    "(or `agentbox image build`)", pytrace=False)
    yield client
    # Leak check for the whole run: no container of this process, no run dir.
    left = client.containers.list(all=True,
                                  filters={"label": f"{LABEL_OWNER_PID}={os.getpid()}"})
    for c in left:
        c.remove(force=True)
    client.close()
    dirs = [f"{p.name}: {sorted(x.name for x in p.iterdir())}" for p in RUN_ROOT.iterdir()] if RUN_ROOT.exists() else []
    assert not left, f"containers left behind by the tests: {[c.name for c in left]}"
    assert not dirs, f"session directories left behind by the tests: {dirs}"
