"""The history's tables, the statements of the per-execute write (built once), and the
SQLite pragmas (api/server/store.py writes through them, api/server/export.py reads)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    cast,
    func,
    insert,
    select,
    update,
)

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

def execution_row(session_id: str, seq: int, code: str, result: dict[str, Any],
                  started_at: float) -> dict[str, Any]:
    """The columns one execution write fills (id is the database's), from the result
    body; ``result`` is the body itself (the loop's writer stores its JSON text)."""
    return {"session_id": session_id, "seq": seq, "code": code, "status": result["status"],
            "execution_count": result.get("execution_count"), "result": result,
            "started_at": started_at, "duration_ms": result.get("duration_ms", 0.0)}


EXECUTION_COLUMNS = tuple(execution_row("", 0, "", {"status": ""}, 0.0))

# Characters of history each key holds (code + result JSON of its executions), kept in
# step with every write and purge in the same transaction; counted from the rows the
# first time a key writes (a database from before this table starts right).
history_usage = Table(
    "history_usage", metadata,
    Column("key_id", String(64), primary_key=True),
    Column("chars", BigInteger, nullable=False),
)

def _stored_chars() -> Any:
    """The SQL for a row's size, the way _row_chars counts it."""
    return func.length(executions.c.code) + func.length(cast(executions.c.result, Text))


# The statements of the execution write, built once: it runs before every execute is
# answered, and building a statement (and its cache key) costs more than running it.
# The session's key and what that key's history holds, in one statement (None: not yet
# counted, see HistoryStore._key_usage).
_KEY_OF = (select(sessions.c.key_id, history_usage.c.chars)
           .select_from(sessions.outerjoin(history_usage,
                                           history_usage.c.key_id == sessions.c.key_id))
           .where(sessions.c.id == bindparam("b_session")))
_USAGE = select(history_usage.c.chars).where(history_usage.c.key_id == bindparam("b_key"))
_ADD_USAGE = (update(history_usage).where(history_usage.c.key_id == bindparam("b_key"))
              .values(chars=history_usage.c.chars + bindparam("b_size")))
_NEXT_SEQ = (select(func.coalesce(func.max(executions.c.seq), 0))
             .where(executions.c.session_id == bindparam("b_session")))
_INSERT_EXECUTION = insert(executions)



def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
