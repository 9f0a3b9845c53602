"""Durable history: sessions and every execution, kept by the host, outside the box.

SQLite (WAL) in the data directory by default; any SQLAlchemy URL (PostgreSQL for
several API processes) otherwise. Writes happen before the HTTP response returns,
in a worker thread, so the event loop never blocks on the database.
"""

from __future__ import annotations

import os
import random
import socket
import time
from pathlib import Path
from typing import Any

import anyio.to_thread
from sqlalchemy import (
    JSON,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from sandbox._manager import pid_alive

metadata = MetaData()

sessions = Table(
    "sessions", metadata,
    Column("id", String(64), primary_key=True),
    Column("key_id", String(64), nullable=False, index=True),
    Column("created_at", Float, nullable=False),
    Column("closed_at", Float, nullable=True),
    Column("limits", JSON, nullable=False),
    Column("metadata", JSON, nullable=False),
    Column("one_shot", Integer, nullable=False, default=0),
    Column("server_id", String(64), nullable=True, index=True),
)

# API processes sharing the database; a session whose server stopped beating is closed.
servers = Table(
    "servers", metadata,
    Column("id", String(64), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
)

executions = Table(
    "executions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String(64), nullable=False, index=True),
    Column("seq", Integer, nullable=False),
    Column("code", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("execution_count", Integer, nullable=True),
    Column("result", JSON, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("duration_ms", Float, nullable=False),
    UniqueConstraint("session_id", "seq", name="uq_executions_session_seq"),
)


class HistoryStore:
    """Called by the API routes: record sessions and executions, read them back."""

    def __init__(self, url: str, server_id: str | None = None) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.url = url
        self.server_id = server_id
        self.engine: Engine = create_engine(url, future=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        for attempt in range(6):
            try:
                metadata.create_all(self.engine)
                break
            except DBAPIError:  # another process created them at the same moment
                if attempt == 5:
                    raise
                time.sleep(0.05 + random.random() * 0.2)  # noqa: S311 - jitter, not crypto

    def close(self) -> None:
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
                       started_at: float) -> int:
        # seq is max+1; the unique constraint turns a race between two writers (two API
        # processes) into a retry instead of a duplicate number.
        for _ in range(20):
            try:
                with self.engine.begin() as conn:
                    seq = conn.execute(
                        select(func.coalesce(func.max(executions.c.seq), 0))
                        .where(executions.c.session_id == session_id)).scalar_one() + 1
                    conn.execute(insert(executions).values(
                        session_id=session_id, seq=seq, code=code, status=result["status"],
                        execution_count=result.get("execution_count"), result=result,
                        started_at=started_at, duration_ms=result.get("duration_ms", 0.0)))
                    return int(seq)
            except IntegrityError:
                time.sleep(random.random() * 0.01)  # noqa: S311 - jitter, not crypto
        raise RuntimeError(f"could not number an execution of {session_id}")

    async def add_execution(self, session_id: str, code: str, result: dict[str, Any],
                            started_at: float) -> int:
        seq: int = await anyio.to_thread.run_sync(self._add_execution, session_id, code,
                                                  result, started_at)
        return seq

    def _purge(self, before: float) -> int:
        with self.engine.begin() as conn:
            old = [r.id for r in conn.execute(select(sessions.c.id).where(
                sessions.c.closed_at.is_not(None), sessions.c.closed_at < before))]
            if old:
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


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
