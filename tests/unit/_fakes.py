"""Fakes for the manager's bookkeeping: a session that needs no kernel, on FakeRuntime.

A :class:`FakeSession` has what the SessionManager and the WarmPool read of a session
(id, state, phases, timestamps, per-session lifetimes; for the SandboxService also
``created_at`` and ``interrupt``) and starts and removes a
container record on the runtime, so that tests can count what is left. The manager
makes sessions in one place, ``SessionManager._new_session``; :func:`use_fake_sessions`
points it at FakeSession.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from sandbox import SandboxConfig, SessionManager, SessionState
from sandbox._runtime.base import (
    LABEL_APP,
    LABEL_OWNER_PID,
    LABEL_RUN_DIR,
    LABEL_SESSION,
    ContainerSpec,
    Runtime,
)


@dataclass
class Behaviour:
    """How the fake sessions of one manager start: how long it takes, whether it fails."""

    start_s: float = 0.0
    fail: BaseException | None = None
    started: int = 0
    closed: int = 0
    made: list[FakeSession] = field(default_factory=list)


class FakeSession:
    def __init__(self, config: SandboxConfig, runtime: Runtime, run_root: Path,
                 labels: dict[str, str], behaviour: Behaviour) -> None:
        self.id = f"s-{secrets.token_hex(6)}"
        self.config = config
        self.runtime = runtime
        self.run_dir = run_root / self.id
        self.labels = labels
        self.behaviour = behaviour
        self.state = SessionState.NEW
        self.container_id: str | None = None
        self.phases: dict[str, float] = {}
        self.last_used = time.monotonic()
        self.started_monotonic = time.monotonic()
        self.created_at = time.time()
        self.from_pool = False
        self.interrupts = 0
        self.interrupt_ends = True  # an interrupt ends a BUSY session's cell (READY again)
        self.idle_timeout_s: float | None = None
        self.max_lifetime_s: float | None = None

    async def start(self) -> FakeSession:
        self.state = SessionState.STARTING
        await asyncio.sleep(self.behaviour.start_s)
        if self.behaviour.fail is not None:
            self.state = SessionState.CLOSED
            raise self.behaviour.fail
        self.run_dir.mkdir(parents=True, exist_ok=True)
        labels = {**self.labels, LABEL_APP: "agentbox", LABEL_SESSION: self.id,
                  LABEL_RUN_DIR: str(self.run_dir), LABEL_OWNER_PID: str(os.getpid())}
        self.container_id = await self.runtime.start(ContainerSpec(
            name=f"agentbox-{self.id}", image="agentbox-kernel:fake", config=self.config,
            run_dir=self.run_dir, env={}, labels=labels))
        self.phases["container_start"] = 0.0
        self.state = SessionState.READY
        self.started_monotonic = self.last_used = time.monotonic()
        self.behaviour.started += 1
        return self

    async def interrupt(self) -> None:
        self.interrupts += 1
        if self.interrupt_ends and self.state is SessionState.BUSY:
            self.state = SessionState.READY

    async def close(self) -> None:
        if self.state is SessionState.CLOSED:
            return
        self.state = SessionState.CLOSED
        if self.container_id is not None:
            await self.runtime.remove(self.container_id)
        if self.run_dir.is_dir():
            self.run_dir.rmdir()
        self.behaviour.closed += 1


def use_fake_sessions(manager: SessionManager, behaviour: Behaviour | None = None) -> Behaviour:
    """Make *manager* build FakeSessions (before it starts); returns their Behaviour."""
    behaviour = behaviour or Behaviour()

    def new_session(config: SandboxConfig) -> FakeSession:
        session = FakeSession(config, manager.runtime, manager.config.run_root,
                              manager._labels(), behaviour)
        behaviour.made.append(session)
        return session

    manager._new_session = new_session  # type: ignore[assignment, method-assign]
    return behaviour

