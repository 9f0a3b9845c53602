"""The per-execute history write on SQLite, on the event loop instead of a worker thread.

Every execute waits for its history row before it is answered. Through SQLAlchemy in a
worker thread that row cost about 1.2 ms of the API's added time, and it slowed the
loop's own kernel reads down too (the loop and the thread handing the GIL to each
other); the same statements through the ``sqlite3`` module on the loop cost about
0.1 ms. They run on the loop only where that cannot hold it for long:

* rows of at most ``INLINE_MAX`` characters (code and result JSON);
* the write lock is taken with ``BEGIN IMMEDIATE`` and ``busy_timeout`` 0, so a database
  another writer holds is never waited for here;
* no checkpoint on the loop (``wal_autocheckpoint`` 0 on this connection): every
  ``CHECKPOINT_EVERY`` rows, HistoryStore writes that row and runs a passive checkpoint
  in a worker thread while the loop's other history writes wait (not the loop), so the
  next write finds the WAL copied back and starts it over.

Anything else (another database, a key whose usage was never counted, a busy database,
a clash of numbers) is left to the SQLAlchemy write in a worker thread, which waits and
retries. The statements are the ones declared in api/server/history_tables.py, compiled
once for SQLite, and the quota is the same function, so both writes store the same row.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import bindparam, insert
from sqlalchemy.engine import Engine
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from api.server.history_tables import (
    _ADD_USAGE,
    _KEY_OF,
    _NEXT_SEQ,
    EXECUTION_COLUMNS,
    execution_row,
    executions,
)

INLINE_MAX = 256 * 1024  # characters of code + result JSON written on the loop (~1 ms)
CHECKPOINT_EVERY = 200  # rows between the passive checkpoints run in a worker thread

# (code, result, text) -> (code, result, text, size, notes): HistoryStore's quota.
Quota = Callable[[int, str, dict[str, Any], str],
                 tuple[str, dict[str, Any], str, int, list[str]]]


def small(code: str, result: Any, limit: int) -> bool:
    """Whether *code* and *result* as JSON surely fit in *limit* characters, found
    without building the JSON: each string at its longest escaped, a stop once over."""
    budget = limit - len(code)
    stack = [result]
    while stack:
        item = stack.pop()
        if isinstance(item, str):  # JSON escapes a character in at most 6 (\u00e9)
            budget -= 6 * len(item) + 2
        elif isinstance(item, dict):
            budget -= 2 + 2 * len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            budget -= 2 + 2 * len(item)
            stack.extend(item)
        else:
            budget -= 24  # a number, a bool, None
        if budget < 0:
            return False
    return True


class _Compiled:
    """One statement as SQLite's SQL and the order of its parameters."""

    def __init__(self, stmt: ClauseElement, engine: Engine) -> None:
        compiled = stmt.compile(dialect=engine.dialect)
        assert isinstance(compiled, SQLCompiler) and engine.dialect.paramstyle == "qmark"
        self.sql = compiled.string
        self.names = tuple(compiled.positiontup or ())
        self.fixed = compiled.params  # the statement's own literals (coalesce's 0)

    def args(self, values: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(values[name] if name in values else self.fixed[name]
                     for name in self.names)


class InlineWriter:
    """The write on the loop: ``write`` returns the row's number, or None when this row
    is for the worker thread instead (nothing was written then)."""

    def __init__(self, engine: Engine) -> None:
        self.path = str(engine.url.database)
        self._conn: sqlite3.Connection | None = None
        self._thread: int | None = None
        self.key_of = _Compiled(_KEY_OF, engine)
        self.add_usage = _Compiled(_ADD_USAGE, engine)
        self.next_seq = _Compiled(_NEXT_SEQ, engine)
        self.insert = _Compiled(insert(executions).values(
            {name: bindparam(f"v_{name}") for name in EXECUTION_COLUMNS}), engine)
        self.since_checkpoint = 0

    @staticmethod
    def usable(engine: Engine) -> bool:
        database = engine.url.database
        return (engine.dialect.name == "sqlite" and bool(database)
                and database != ":memory:" and not str(database).startswith("file:"))

    def _connection(self) -> sqlite3.Connection | None:
        """This thread's connection (the loop's); None from any other thread."""
        me = threading.get_ident()
        if self._conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA busy_timeout=0")
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA wal_autocheckpoint=0")
            except sqlite3.Error:
                conn.close()
                raise
            self._conn, self._thread = conn, me
        return self._conn if self._thread == me else None

    def write(self, session_id: str, code: str, result: dict[str, Any], text: str,
              started_at: float, quota: Quota) -> tuple[int, list[str]] | None:
        if len(code) + len(text) > INLINE_MAX:
            return None
        try:
            conn = self._connection()
        except sqlite3.Error:  # no connection of its own now: the worker thread writes
            return None
        if conn is None:
            return None
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:  # another writer has the database: not waited for
            return None
        try:
            # fetchall: a statement left unfinished would keep its read snapshot open,
            # and the WAL could never start over after a checkpoint.
            rows = conn.execute(self.key_of.sql,
                                self.key_of.args({"b_session": session_id})).fetchall()
            found = rows[0] if rows else None
            notes: list[str] = []
            if found is not None:
                key_id, used = found
                if used is None:  # never counted: the worker thread counts it
                    conn.rollback()
                    return None
                code, result, text, size, notes = quota(int(used), code, result, text)
                conn.execute(self.add_usage.sql,
                             self.add_usage.args({"b_key": key_id, "b_size": size}))
            seq = int(conn.execute(self.next_seq.sql, self.next_seq.args(
                {"b_session": session_id})).fetchall()[0][0]) + 1
            values = execution_row(session_id, seq, code, result, started_at)
            values["result"] = text  # the JSON the quota measured, not built twice
            conn.execute(self.insert.sql,
                         self.insert.args({f"v_{k}": v for k, v in values.items()}))
            conn.commit()
        except Exception:  # whatever it was, the worker thread's write decides
            conn.rollback()
            return None
        self.since_checkpoint += 1
        return seq, notes

    def checkpoint_due(self) -> bool:
        if self.since_checkpoint < CHECKPOINT_EVERY:
            return False
        self.since_checkpoint = 0
        return True

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
