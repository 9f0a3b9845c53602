"""Large kernel messages are verified and parsed off the event loop, in worker processes.

A message under :data:`INLINE_BYTES` is parsed where it arrives (a few milliseconds at
most). A larger one goes to one of :data:`WORKERS` processes running
``sandbox/_parse_worker.py`` (stdlib only, memory-capped), so neither the HMAC over
tens of MB nor a ``json.loads`` that holds the GIL for a second can stall the loop
that serves every other session. A worker that dies or takes longer than
:data:`PARSE_TIMEOUT_S` is killed and replaced; the message is then dropped, and the
caller says so. The workers are shared by every session in the process, started on
first use and killed at exit; each is driven from a thread of its own, so nothing here
belongs to one event loop.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import marshal
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any, cast

INLINE_BYTES = 256 * 1024
WORKERS = 2
PARSE_TIMEOUT_S = 10.0
WORKER_SCRIPT = Path(__file__).with_name("_parse_worker.py")


class ParseRefused(ValueError):
    """The worker refused the message (bad signature, malformed, too many values)."""


class _Worker:
    """One worker process, driven by one thread of :data:`_threads` (blocking pipe I/O
    releases the GIL; only the bounded ``marshal.loads`` holds it)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None

    def _ensure(self) -> subprocess.Popen[bytes]:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen([sys.executable, "-I", str(WORKER_SCRIPT)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, bufsize=0)
            _live.add(self.proc)
        return self.proc

    def parse(self, key: bytes, parts: list[bytes]) -> tuple[str, Any]:
        proc = self._ensure()
        assert proc.stdin is not None and proc.stdout is not None
        timer = threading.Timer(PARSE_TIMEOUT_S, self.kill)
        timer.start()
        try:
            proc.stdin.write(struct.pack(">Q", len(key)) + key + struct.pack(">I", len(parts)))
            for part in parts:
                proc.stdin.write(struct.pack(">Q", len(part)))
                proc.stdin.write(part)
            (size,) = struct.unpack(">Q", _read(proc.stdout, 8))
            body = _read(proc.stdout, size)
        except (OSError, ValueError, EOFError, struct.error) as exc:
            self.kill()
            raise ParseRefused("the parse worker gave up on it (timed out or out of memory)"
                               ) from exc
        finally:
            timer.cancel()
        # Our own worker's answer: plain JSON values marshalled, bounded in count.
        answer: tuple[str, Any] = marshal.loads(body)  # noqa: S302
        return answer

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        if proc is not None:
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
            _live.discard(proc)


def _read(stream: IO[bytes], n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


_live: set[subprocess.Popen[bytes]] = set()
_local = threading.local()
_threads = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="agentbox-parse")


def _parse_in_thread(key: bytes, parts: list[bytes]) -> tuple[str, Any]:
    worker = getattr(_local, "worker", None)
    if worker is None:
        worker = _local.worker = _Worker()
    return cast(tuple[str, Any], worker.parse(key, parts))


async def parse(key: bytes, parts: list[bytes]) -> list[Any]:
    """[header, parent, metadata, content] of a large message (*parts*: signature and
    what follows it); raises ParseRefused."""
    loop = asyncio.get_running_loop()
    status, value = await loop.run_in_executor(_threads, _parse_in_thread, key, parts)
    if status != "ok" or not isinstance(value, list) or len(value) != 4:
        raise ParseRefused(str(value))
    return value


@atexit.register
def _stop_workers() -> None:
    for proc in list(_live):
        with contextlib.suppress(Exception):
            proc.kill()
            proc.wait(timeout=5)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
    _live.clear()
