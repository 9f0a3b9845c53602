"""Durable history: sessions and every execution, kept by the host, outside the box.

SQLite (WAL) in the data directory by default; any SQLAlchemy URL (PostgreSQL for
several API processes) otherwise. Writes happen before the HTTP response returns, in
a worker thread, so the event loop never waits on the database; the one exception is
a small execution row on SQLite, written on the loop without waiting for any lock
(api/server/history_inline.py).

What is written is bounded, since every output in it comes from a box: one
execution's row holds at most ``max_execution_bytes`` (characters of code and
result JSON; past it the fields that repeat the outputs go, then outputs from the
end), and one key's rows at most ``max_key_bytes`` in all (past it each further
execution is a stub of at most ``STUB_MAX`` characters: status, code's start,
notes). Every cut is said in the row's ``notes`` and ``truncated``, and to the
caller. Sizes are counted in characters, as the databases' ``length()`` does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
from sqlalchemy import Text, cast, create_engine, delete, event, func, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from api.server.history_caps import (
    MAX_EXECUTION_BYTES,
    MAX_KEY_BYTES,
    STUB_CODE,
    STUB_MAX,
    STUB_NOTE,
    STUB_NOTES,
    MiB,
    _row_chars,
    fit_execution,
    stub_execution,
)
from api.server.history_inline import INLINE_MAX, InlineWriter, small
from api.server.history_tables import (
    _ADD_USAGE,
    _INSERT_EXECUTION,
    _KEY_OF,
    _NEXT_SEQ,
    _USAGE,
    _sqlite_pragmas,
    _stored_chars,
    execution_row,
    executions,
    history_usage,
    metadata,
    servers,
    sessions,
)
from sandbox.utils import pid_alive

log = logging.getLogger("agentbox.api")

__all__ = ["EXPORT_CODE_PREFIX", "MAX_EXECUTION_BYTES", "MAX_KEY_BYTES", "STUB_CODE", "STUB_MAX",
           "STUB_NOTE", "STUB_NOTES", "HistoryStore", "MiB", "executions", "export_rows",
           "fit_execution", "history_usage", "metadata", "servers", "sessions",
           "stub_execution"]


class HistoryStore:
    """Called by the API routes: record sessions and executions, read them back."""

    def __init__(self, url: str, server_id: str | None = None, *,
                 max_execution_bytes: int = MAX_EXECUTION_BYTES,
                 max_key_bytes: int = MAX_KEY_BYTES) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.url = url
        self.server_id = server_id
        self.max_execution_bytes = max(max_execution_bytes, STUB_MAX)
        self.max_key_bytes = max_key_bytes
        self.engine: Engine = create_engine(url, future=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.inline = InlineWriter(self.engine) if InlineWriter.usable(self.engine) else None
        self._checkpointing: asyncio.Task[int] | None = None
        for attempt in range(6):
            try:
                metadata.create_all(self.engine)
                break
            except DBAPIError:  # another process created them at the same moment
                if attempt == 5:
                    raise
                time.sleep(0.05 + random.random() * 0.2)  # noqa: S311 - jitter, not crypto

    def close(self) -> None:
        if self.inline is not None:
            self.inline.close()
        self.engine.dispose()

    # -- writes ----------------------------------------------------------------------
    def _add_session(self, row: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(sessions).values(**row))

    async def add_session(self, session_id: str, key_id: str, limits: dict[str, Any],
                          meta: dict[str, Any], one_shot: bool = False) -> None:
        row = {"id": session_id, "key_id": key_id, "created_at": time.time(),
               "closed_at": None, "limits": limits, "metadata": meta,
               "one_shot": int(one_shot), "server_id": self.server_id}
        await anyio.to_thread.run_sync(self._add_session, row)

    def _close_session(self, session_id: str, at: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(sessions).where(sessions.c.id == session_id,
                                                sessions.c.closed_at.is_(None))
                         .values(closed_at=at))

    async def close_session(self, session_id: str) -> None:
        await anyio.to_thread.run_sync(self._close_session, session_id, time.time())

    def _add_execution(self, session_id: str, code: str, result: dict[str, Any],
                       started_at: float, said: list[str] | None = None) -> int:
        code, result, text, cut = fit_execution(code, result, self.max_execution_bytes)
        # seq is max+1; the unique constraint turns a race between two writers (two API
        # processes) into a retry instead of a duplicate number.
        for _ in range(20):
            try:
                with self.engine.begin() as conn:
                    row_code, row, notes = self._within_key_quota(
                        conn, session_id, code, result, text)
                    seq = conn.execute(_NEXT_SEQ, {"b_session": session_id}).scalar_one() + 1
                    conn.execute(_INSERT_EXECUTION,
                                 execution_row(session_id, seq, row_code, row, started_at))
                    if said is not None:
                        said.extend(cut + notes)
                    return int(seq)
            except IntegrityError:
                time.sleep(random.random() * 0.01)  # noqa: S311 - jitter, not crypto
        raise RuntimeError(f"could not number an execution of {session_id}")

    def _within_key_quota(self, conn: Any, session_id: str, code: str, result: dict[str, Any],
                          text: str) -> tuple[str, dict[str, Any], list[str]]:
        """The row itself if the key's history has room for it, else a stub; the key's
        count goes up by what is written."""
        found = conn.execute(_KEY_OF, {"b_session": session_id}).first()
        if found is None:  # a session this store never saw: nobody to count against
            return code, result, []
        key_id, used = found
        used = self._key_usage(conn, key_id) if used is None else int(used)
        code, result, text, size, notes = self._quota(used, code, result, text)
        conn.execute(_ADD_USAGE, {"b_key": key_id, "b_size": size})
        return code, result, notes

    def _quota(self, used: int, code: str, result: dict[str, Any], text: str
               ) -> tuple[str, dict[str, Any], str, int, list[str]]:
        """What a key that holds *used* characters stores of this row, its size, and
        the note when that is a stub (both writes, the thread's and the loop's)."""
        size = _row_chars(code, text)
        if used + size <= self.max_key_bytes:
            return code, result, text, size, []
        note = (f"history: this key's history is full ({used} of its {self.max_key_bytes}"
                " characters): only the start of the code, the status and the notes of "
                "this execution are stored; closed sessions free it when their retention "
                "ends")
        code, result, text = stub_execution(code, result, note)
        return code, result, text, _row_chars(code, text), [note]

    @staticmethod
    def _key_usage(conn: Any, key_id: str) -> int:
        used = conn.execute(_USAGE, {"b_key": key_id}).scalar()
        if used is not None:
            return int(used)
        counted = conn.execute(
            select(func.coalesce(func.sum(_stored_chars()), 0))
            .select_from(executions.join(sessions, executions.c.session_id == sessions.c.id))
            .where(sessions.c.key_id == key_id)).scalar_one()
        # A concurrent first write of the same key makes this an IntegrityError: retried.
        conn.execute(insert(history_usage).values(key_id=key_id, chars=int(counted)))
        return int(counted)

    async def add_execution(self, session_id: str, code: str, result: dict[str, Any],
                            started_at: float, said: list[str] | None = None) -> int:
        """Record one execution; what the history's caps cut is appended to *said*.
        A small row on SQLite is written on the loop (api/server/history_inline.py),
        anything else in a worker thread."""
        if self.inline is not None and small(code, result, INLINE_MAX):
            while self._checkpointing is not None:  # the WAL starts over after it
                await asyncio.wait([self._checkpointing])
            if self.inline.checkpoint_due():
                # This row, then the checkpoint, in a worker thread; the loop's other
                # writes wait for both, so the next write finds the WAL all copied back
                # and starts it over (checkpoints that always race a writer never do).
                task = asyncio.get_running_loop().create_task(
                    anyio.to_thread.run_sync(self._add_and_checkpoint, session_id, code,
                                             result, started_at, said),
                    name="agentbox-history-checkpoint")
                self._checkpointing = task
                task.add_done_callback(self._checkpoint_done)
                return await asyncio.shield(task)
            fitted, row, text, cut = fit_execution(code, result, self.max_execution_bytes)
            done = self.inline.write(session_id, fitted, row, text, started_at, self._quota)
            if done is not None:
                if said is not None:
                    said.extend(cut + done[1])
                return done[0]
        seq: int = await anyio.to_thread.run_sync(self._add_execution, session_id, code,
                                                  result, started_at, said)
        return seq

    def _checkpoint_done(self, task: asyncio.Task[int]) -> None:
        if self._checkpointing is task:
            self._checkpointing = None

    def _add_and_checkpoint(self, session_id: str, code: str, result: dict[str, Any],
                            started_at: float, said: list[str] | None) -> int:
        seq = self._add_execution(session_id, code, result, started_at, said)
        try:
            self._checkpoint()
        except DBAPIError:  # the next one tries again; the WAL is only longer meanwhile
            log.warning("history checkpoint failed", exc_info=True)
        return seq

    def _checkpoint(self) -> None:
        """What the loop's connection leaves undone: the WAL copied back into the
        database (passive: it waits for no reader and no writer)."""
        with self.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def key_usage(self, key_id: str) -> int:
        """Characters of history *key_id* holds (0 for a key that never wrote)."""
        with self.engine.connect() as conn:
            used = conn.execute(select(history_usage.c.chars)
                                .where(history_usage.c.key_id == key_id)).scalar()
            return int(used or 0)

    def _purge(self, before: float) -> int:
        with self.engine.begin() as conn:
            old = [r.id for r in conn.execute(select(sessions.c.id).where(
                sessions.c.closed_at.is_not(None), sessions.c.closed_at < before))]
            if old:
                freed = conn.execute(
                    select(sessions.c.key_id, func.sum(_stored_chars()))
                    .select_from(executions.join(sessions,
                                                 executions.c.session_id == sessions.c.id))
                    .where(sessions.c.id.in_(old)).group_by(sessions.c.key_id)).all()
                for key_id, chars in freed:
                    conn.execute(update(history_usage)
                                 .where(history_usage.c.key_id == key_id)
                                 .values(chars=history_usage.c.chars - int(chars or 0)))
                conn.execute(update(history_usage).where(history_usage.c.chars < 0)
                             .values(chars=0))
                conn.execute(delete(executions).where(executions.c.session_id.in_(old)))
                conn.execute(delete(sessions).where(sessions.c.id.in_(old)))
            return len(old)

    async def purge_closed_before(self, before: float) -> int:
        """Forget sessions closed before *before* (the retention period's end)."""
        n: int = await anyio.to_thread.run_sync(self._purge, before)
        return n

    def _beat(self, now: float, stale_after_s: float) -> int:
        """Record this server as alive; close the open sessions of servers that are not."""
        assert self.server_id is not None
        host = socket.gethostname()
        with self.engine.begin() as conn:
            updated = conn.execute(update(servers).where(servers.c.id == self.server_id)
                                   .values(last_seen=now)).rowcount
            if not updated:
                conn.execute(insert(servers).values(id=self.server_id, host=host,
                                                    pid=os.getpid(), started_at=now,
                                                    last_seen=now))
            dead = [r.id for r in conn.execute(select(servers)) if r.id != self.server_id and (
                r.last_seen < now - stale_after_s
                or (r.host == host and not pid_alive(r.pid)))]
            alive = select(servers.c.id).where(servers.c.id.not_in(dead))
            closed = conn.execute(update(sessions).where(
                sessions.c.closed_at.is_(None),
                sessions.c.server_id.is_(None) | sessions.c.server_id.not_in(alive),
            ).values(closed_at=now)).rowcount
            if dead:
                conn.execute(delete(servers).where(servers.c.id.in_(dead)))
            return int(closed or 0)

    async def heartbeat(self, stale_after_s: float = 60.0) -> int:
        """Called at start-up and by the janitor: keeps this server's sessions open and
        closes those whose server died (a crash leaves them open). Returns how many."""
        n: int = await anyio.to_thread.run_sync(self._beat, time.time(), stale_after_s)
        return n

    def _leave(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(servers).where(servers.c.id == self.server_id))

    async def leave(self) -> None:
        """At a clean shutdown, after closing this server's sessions."""
        if self.server_id is not None:
            await anyio.to_thread.run_sync(self._leave)

    # -- reads -----------------------------------------------------------------------
    def _get_session(self, session_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(sessions).where(sessions.c.id == session_id)).first()
            return dict(row._mapping) if row else None

    async def get_session(self, session_id: str) -> dict[str, Any] | None:
        row: dict[str, Any] | None = await anyio.to_thread.run_sync(self._get_session,
                                                                    session_id)
        return row

    def _history(self, session_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(executions).where(executions.c.session_id == session_id)
                                .order_by(executions.c.seq))
            return [dict(r._mapping) for r in rows]

    async def history(self, session_id: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await anyio.to_thread.run_sync(self._history, session_id)
        return rows

    def export_rows(self, session_id: str, max_chars: int
                    ) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
        return export_rows(self.engine, session_id, max_chars)


EXPORT_CODE_PREFIX = 1000  # characters of code a cell past the export's budget keeps


def export_rows(engine: Engine, session_id: str, max_chars: int
                ) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    """For a notebook export (api/server/export.py): each execution's columns and code, with
    its result, while what was read so far (code and result) stays within *max_chars*;
    after that, each cell comes with the start of its code and None for the result.
    Rows are read one at a time, so an export holds about *max_chars* of them, plus
    EXPORT_CODE_PREFIX per later cell, whatever the history holds."""
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(
            select(executions.c.id, executions.c.seq, executions.c.status,
                   executions.c.execution_count, executions.c.duration_ms,
                   func.length(executions.c.code).label("code_chars"),
                   func.length(cast(executions.c.result, Text)).label("chars"))
            .where(executions.c.session_id == session_id).order_by(executions.c.seq))]
        budget = max_chars
        for row in rows:
            size = int(row.pop("chars") or 0) + int(row["code_chars"] or 0)
            if budget >= 0 and size <= budget:
                budget -= size
                code, result = conn.execute(select(executions.c.code, executions.c.result)
                                            .where(executions.c.id == row["id"])).one()
                yield {**row, "code": code}, result
                continue
            budget = -1  # spent: no later cell gets its outputs either, so none is missed
            code = conn.execute(select(func.substr(executions.c.code, 1, EXPORT_CODE_PREFIX))
                                .where(executions.c.id == row["id"])).scalar_one()
            yield {**row, "code": code}, None
