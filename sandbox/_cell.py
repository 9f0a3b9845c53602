"""A cell run: one execution's messages, its deadline and how it ends.

A cell over its time limit is ended in escalating steps, and the result says which
one did it (:class:`~sandbox.TimeoutInfo`): SIGINT to the kernel; after
``interrupt_grace_s``, a fresh kernel in the same container (variables lost, files
kept); if the container's init does not cooperate, a new container (files lost too).
After the ``execute_reply`` the kernel's IOPub ``idle`` may lag by ``IOPUB_GRACE_S``
(counted from the latest IOPub message); past that, the output is declared lost.

The run talks to two small things (Protocols below), so that it can be driven
without Docker, as ``tests/unit/test_cell_loop.py`` does:

- a :class:`Messages` source: ``(channel, message)`` pairs, where the channel is
  ``shell``/``iopub`` (kernel messages) or one the host posts: ``died`` (payload
  ``{"death": KernelDeath}``), ``dropped`` (a message the host did not keep) or
  ``parsing`` (a big message is being parsed: IOPub is still working);
- a :class:`Controls` box: ``interrupt``, ``restart`` (in place; False when init did
  not cooperate), ``replace``, ``reconnect_iopub`` and ``hold`` (the session's life
  lock, held across a restart and its fallback).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from sandbox._config import SandboxConfig
from sandbox._exceptions import ConfigError, SandboxError
from sandbox._models import ExecutionResult, KernelDeath, TimeoutInfo
from sandbox._outputs import Event, OutputAssembler
from sandbox._wire import MAX_FRAMES

IOPUB_GRACE_S = 1.0  # after the execute_reply, how long the IOPub 'idle' may lag
IOPUB_LOST_NOTE = (
    "the kernel's final 'idle' status did not arrive: output was lost (the host ended the "
    "IOPub connection after a message over its caps: max_message_bytes {mib} MiB, at most "
    f"{MAX_FRAMES} frames); the rest of this cell's output is missing")


class Messages(Protocol):
    async def get(self) -> tuple[str, dict[str, Any]]: ...


class Controls(Protocol):
    def hold(self) -> AbstractAsyncContextManager[Any]: ...

    async def interrupt(self) -> None: ...

    async def restart(self) -> bool: ...

    async def replace(self) -> None: ...

    async def reconnect_iopub(self) -> None: ...


@dataclass(frozen=True)
class CellLimits:
    limit_s: float
    interrupt_grace_s: float
    max_message_bytes: int
    iopub_grace_s: float = IOPUB_GRACE_S


async def escalate(box: Controls) -> Literal["restart", "replace"]:
    """A fresh kernel in place, else a fresh container; under one hold of the box."""
    async with box.hold():
        if await box.restart():
            return "restart"
        await box.replace()
        return "replace"


def drop_note(event: dict[str, Any], max_message_bytes: int) -> str:
    """The note for a kernel message the host did not keep (``KernelConnection`` posts
    these; the reason is the host's own words, not the box's)."""
    reason = event.get("reason")
    return (f"a kernel message was dropped unread: {reason}; max_message_bytes is "
            f"{max_message_bytes // 2**20} MiB" if isinstance(reason, str) and reason
            else "a kernel message was dropped unread")


def check_cell(code: object, timeout: object, default_s: float) -> float:
    """The time limit of a cell of *code* (ConfigError for what cannot be run)."""
    if not isinstance(code, str):
        raise ConfigError("code must be a string")
    if "\0" in code:
        raise ConfigError("code contains a NUL byte, which Python source cannot hold")
    limit = default_s if timeout is None else timeout
    if not isinstance(limit, int | float) or limit <= 0:
        raise ConfigError(f"timeout must be a positive number of seconds, not {timeout!r}")
    return float(limit)


def _kind(msg: dict[str, Any]) -> object:
    header = msg.get("header") if isinstance(msg, dict) else None
    return header.get("msg_type") if isinstance(header, dict) else None


class CellRun:
    """One execution: iterate :meth:`events` for its outputs, then :meth:`result`."""

    def __init__(self, messages: Messages, box: Controls, limits: CellLimits,
                 assembler: OutputAssembler, notes: list[str] | None = None) -> None:
        self.messages = messages
        self.box = box
        self.limits = limits
        self.assembler = assembler
        self.notes = notes if notes is not None else []
        self.reply: dict[str, Any] | None = None
        self.death: KernelDeath | None = None
        self.timeout: TimeoutInfo | None = None
        self.interrupting = False
        self.finished = False
        self.iopub_lost = False  # the 'idle' never came: IOPub needs a new connection
        self.iopub_cut = False  # the host dropped a kernel message of this cell (a cap)
        self.deadline = time.monotonic() + limits.limit_s
        self.idle_deadline: float | None = None

    @classmethod
    def configured(cls, messages: Messages, box: Controls, limit_s: float,
                   config: SandboxConfig, notes: list[str] | None = None) -> CellRun:
        """A run with *config*'s grace and caps."""
        assembler = OutputAssembler(config.max_output_bytes, max_outputs=config.max_outputs,
                                    max_live_events=config.max_live_events,
                                    max_live_bytes=config.max_live_bytes)
        limits = CellLimits(limit_s, config.interrupt_grace_s, config.max_message_bytes)
        return cls(messages, box, limits, assembler, notes)

    @property
    def abandoned(self) -> bool:
        """The caller left before the kernel answered: the cell may still be running."""
        return not self.finished and self.reply is None and self.death is None

    def interrupted(self, grace_s: float) -> None:
        """The caller already sent SIGINT: escalate to a restart after *grace_s*."""
        self.interrupting = True
        self.deadline = time.monotonic() + grace_s

    async def events(self) -> AsyncGenerator[Event, None]:
        """The cell's outputs as they come, until it ended (or was ended)."""
        while not (self.reply is not None and self.assembler.idle):
            until = self.deadline if self.idle_deadline is None else min(
                self.deadline, self.idle_deadline)
            try:
                async with asyncio.timeout(max(0.0, until - time.monotonic())):
                    channel, msg = await self.messages.get()
            except TimeoutError:
                if await self._overdue():
                    break
                continue
            if self.reply is not None and channel in ("iopub", "dropped", "parsing"):
                # IOPub is still delivering (or dropping) this cell's messages: the
                # grace for its 'idle' counts from the latest one, not the reply.
                self.idle_deadline = time.monotonic() + self.limits.iopub_grace_s
            if channel == "iopub":
                for event in self.assembler.feed(msg):
                    yield event
            elif not self._take(channel, msg):
                break
        if self.interrupting and self.timeout is None and self.death is None:
            self.timeout = TimeoutInfo(limit_s=self.limits.limit_s, ended_by="interrupt",
                                       state_lost=False)
        self.finished = True

    def _take(self, channel: str, msg: dict[str, Any]) -> bool:
        """A message that is not output; False when the cell is over."""
        if channel == "shell" and _kind(msg) == "execute_reply":
            self.reply = msg
            self.idle_deadline = time.monotonic() + self.limits.iopub_grace_s
        elif channel == "died":
            death = msg.get("death")
            self.death = death if isinstance(death, KernelDeath) else KernelDeath(
                reason="the kernel stopped")
            return False
        elif channel == "dropped":
            self.iopub_cut = True
            note = drop_note(msg, self.limits.max_message_bytes)
            if note not in self.notes:
                self.notes.append(note)
        return True

    async def _overdue(self) -> bool:
        """A deadline passed: the next step of the ladder. True when the cell is over."""
        if self.reply is not None:
            self.notes.append(IOPUB_LOST_NOTE.format(
                mib=self.limits.max_message_bytes // 2**20))
            self.iopub_lost = True
            return True
        if not self.interrupting:
            await self.box.interrupt()
            self.interrupted(self.limits.interrupt_grace_s)
            return False
        ended_by = await escalate(self.box)
        self.timeout = TimeoutInfo(limit_s=self.limits.limit_s, ended_by=ended_by,
                                   state_lost=True, files_lost=ended_by == "replace")
        return True

    async def result(self, *, started: float, restarted: bool = False) -> ExecutionResult:
        """The result of a run that ended (it began at monotonic *started*); a lost
        IOPub is reconnected first (the kernel restarted when that fails)."""
        if self.iopub_lost:
            try:
                await self.box.reconnect_iopub()
            except SandboxError:
                await escalate(self.box)
                self.notes.append("IOPub could not be reconnected; the kernel was restarted")
        return build_result(self, duration_s=time.monotonic() - started, restarted=restarted)


async def abandon(run: CellRun, grace_s: float) -> None:
    """End a cell nobody waits for any more: interrupt it, wait *grace_s* for its reply
    (and 'idle'), then restart the kernel. Its outputs go nowhere."""
    await run.box.interrupt()
    run.interrupted(grace_s)
    async for _ in run.events():
        pass


def build_result(run: CellRun, *, duration_s: float, restarted: bool) -> ExecutionResult:
    assembler = run.assembler
    outputs = assembler.finish()
    notes = run.notes + assembler.notes
    content = run.reply.get("content") if run.reply else None
    content = content if isinstance(content, dict) else {}
    count = content.get("execution_count")
    count = count if isinstance(count, int) else assembler.execution_count
    if run.death is not None:
        status = "died"
    elif run.timeout is not None:
        status = "timeout"
        notes.append(timeout_note(run.timeout))
    elif content.get("status") == "ok":
        status = "ok"
    else:
        status = "error"
        if content.get("status") == "aborted":
            notes.append("the kernel aborted this execution")
    return ExecutionResult(
        status=status, execution_count=count, outputs=outputs,  # type: ignore[arg-type]
        duration_s=duration_s, truncated=assembler.truncated or run.iopub_lost or run.iopub_cut,
        timeout=run.timeout, death=run.death, kernel_restarted=restarted, notes=notes)


def timeout_note(info: TimeoutInfo) -> str:
    base = f"execution exceeded its {info.limit_s:g}s limit"
    if info.ended_by == "interrupt":
        return base + "; it was interrupted (KeyboardInterrupt); kernel state is kept"
    if info.ended_by == "restart":
        return base + "; it ignored the interrupt, so the kernel was restarted: " \
                      "variables are gone, files are kept"
    return base + "; the container did not answer, so it was replaced: variables and " \
                  "files are gone"
