"""The attack suite runs under every isolation runtime this engine has: runc always,
gVisor (runsc) where it is registered. Under CI gVisor must be there (``make test``
installs it): a missing runsc fails the run instead of quietly testing less."""

from __future__ import annotations

import os

import pytest

from sandbox._runtime.engine import connect


def registered_runtimes() -> list[str]:
    try:
        client = connect(timeout=10)
    except Exception:
        return ["runc"]  # the engine fixture reports the missing engine
    try:
        found = set(client.info().get("Runtimes", {}))
    finally:
        client.close()
    return [r for r in ("runc", "runsc") if r in found] or ["runc"]


RUNTIMES = registered_runtimes()


@pytest.fixture(params=RUNTIMES, scope="module")
def runtime(request: pytest.FixtureRequest, engine: object) -> str:
    """The isolation runtime under test (module-scoped: share boxes per runtime)."""
    if os.environ.get("CI") and "runsc" not in RUNTIMES:
        pytest.fail("CI must run the attack suite under gVisor too: runsc is not "
                    "registered (make test runs AGENTBOX_WITH_RUNSC=1 scripts/ensure-docker)")
    return str(request.param)
