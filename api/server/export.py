"""Notebook exports, built in a child process of their own.

Exporting a large history is seconds of CPU: reading and decoding result JSON,
building the notebook, encoding it. Built on the event loop it stalled every
session; in a thread it still held the interpreter lock most of the time (two at
once took another key's ``1+1`` from 20 ms to 500 ms at p99). So each export runs
``python -m api.server.export`` on the same database, with its own lock, memory limit and
deadline, and writes the notebook to a pipe the server reads without parsing.

Bounds: ``max_bytes`` characters of stored code and results read (later cells keep
the start of their code and lose their outputs, and say so), ``max_outputs``
outputs, ``2 * max_bytes + SLACK_BYTES`` of notebook read back, ``timeout_s`` of
time, ``memory_bytes`` of address space, ``concurrency`` exports at once (the
caller's limiter). A database the child cannot open (SQLite in memory) is exported
in a worker thread instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine

MiB = 1024 * 1024
SLACK_BYTES = 64 * MiB  # notebook structure, code starts of cells past the budget
STDERR_BYTES = 64 * 1024


class ExportFailed(RuntimeError):
    """The child did not produce a notebook (crashed, too slow, too large)."""


def build(engine: Engine, session_id: str, meta: dict[str, Any], max_bytes: int,
          max_outputs: int) -> Iterator[bytes]:
    """The notebook of *session_id*, encoded piece by piece (see notebook_chunks)."""
    from api.server.store import EXPORT_CODE_PREFIX, export_rows
    from sandbox import NOTEBOOK_SKIPPED as SKIPPED
    from sandbox import ExecutionResult, notebook_chunks, notebook_dict

    skipped = (f"{SKIPPED}: the notebook reached its limit of {max_bytes} characters of "
               "stored code and results")
    cells: list[tuple[str, ExecutionResult | None]] = []
    for columns, result in export_rows(engine, session_id, max_bytes):
        if result is not None:
            cells.append((columns["code"], ExecutionResult.from_dict(result)))
            continue
        code = columns["code"]
        if int(columns["code_chars"] or 0) > EXPORT_CODE_PREFIX:
            code += f"\n# [code not exported past {EXPORT_CODE_PREFIX} characters]"
        cells.append((code, ExecutionResult(
            status=columns["status"], execution_count=columns["execution_count"],
            outputs=[], duration_s=float(columns["duration_ms"] or 0.0) / 1000,
            truncated=True, notes=[skipped])))
    return notebook_chunks(notebook_dict(cells, meta, max_outputs=max_outputs))


def _engine(url: str) -> Engine:
    from api.server.history_tables import _sqlite_pragmas

    engine = create_engine(url, future=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def in_child_process(url: str) -> bool:
    """Whether a child can open *url* (an in-memory SQLite database it cannot)."""
    return not (url in ("sqlite://", "sqlite:///") or ":memory:" in url
                or "mode=memory" in url)


async def export_in_child(url: str, session_id: str, meta: dict[str, Any], *,
                          max_bytes: int, max_outputs: int, timeout_s: float,
                          memory_bytes: int) -> bytes:
    job = json.dumps({"url": url, "session_id": session_id, "meta": meta,
                      "max_bytes": max_bytes, "max_outputs": max_outputs,
                      "memory_bytes": memory_bytes}).encode()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "api.server.export", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        async with asyncio.timeout(timeout_s):
            proc.stdin.write(job)
            await proc.stdin.drain()
            proc.stdin.close()
            body, errors = await asyncio.gather(
                _read_at_most(proc.stdout, 2 * max_bytes + SLACK_BYTES),
                _read_at_most(proc.stderr, STDERR_BYTES, cut=True))
            code = await proc.wait()
    except TimeoutError:
        raise ExportFailed(f"the export took longer than {timeout_s:g}s") from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    if code != 0:
        last = errors.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
        raise ExportFailed(f"the export process failed (exit {code}): {last[0][:500]}")
    return body


async def _read_at_most(stream: asyncio.StreamReader, limit: int, cut: bool = False
                        ) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await stream.read(256 * 1024):
        size += len(chunk)
        if size > limit:
            if cut:
                continue  # (stderr: keep the start, drain the rest)
            raise ExportFailed(f"the notebook is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def main() -> None:
    """The child: a job (JSON) on stdin, the notebook on stdout."""
    import resource

    job = json.loads(sys.stdin.buffer.read())
    limit = int(job["memory_bytes"])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    with contextlib.suppress(OSError):
        os.nice(5)  # the server's loop first
    engine = _engine(job["url"])
    out = sys.stdout.buffer
    for chunk in build(engine, job["session_id"], job["meta"], int(job["max_bytes"]),
                       int(job["max_outputs"])):
        out.write(chunk)
    out.flush()
    engine.dispose()


if __name__ == "__main__":
    main()
