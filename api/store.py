"""Durable history: sessions and every execution, kept by the host, outside the box.

SQLite (WAL) in the data directory by default; any SQLAlchemy URL (PostgreSQL for
several API processes) otherwise. Writes happen before the HTTP response returns,
in a worker thread, so the event loop never blocks on the database.
"""

from __future__ import annotations

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
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine

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
)


class HistoryStore:
    """Called by the API routes: record sessions and executions, read them back."""

    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.url = url
        self.engine: Engine = create_engine(url, future=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        metadata.create_all(self.engine)

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
               "one_shot": int(one_shot)}
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
        with self.engine.begin() as conn:
            seq = conn.execute(select(func.coalesce(func.max(executions.c.seq), 0))
                               .where(executions.c.session_id == session_id)).scalar_one() + 1
            conn.execute(insert(executions).values(
                session_id=session_id, seq=seq, code=code, status=result["status"],
                execution_count=result.get("execution_count"), result=result,
                started_at=started_at, duration_ms=result.get("duration_ms", 0.0)))
            return int(seq)

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

    def _mark_all_closed(self, at: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(sessions).where(sessions.c.closed_at.is_(None))
                         .values(closed_at=at))

    async def mark_open_sessions_closed(self) -> None:
        """At start-up: sessions of a previous process are gone with their containers."""
        await anyio.to_thread.run_sync(self._mark_all_closed, time.time())

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
