"""Files in a session's working directory, moved through ``docker exec``.

Docker's archive API cannot serve a read-only container with tmpfs mounts, so
every operation runs ``/opt/agentbox/files.py`` inside the container as the
sandbox user: the host never opens a path in the sandbox's filesystem, and
the helper refuses symlinks on the way (see its docstring). Paths are checked
here first, so a bad one fails at once with :class:`UnsafePathError`.

The helper runs as the box's own user, so the box can stop it, slow it or write
into its pipes: nothing it sends back is trusted and nothing waits on it without a
deadline. Per session, at most ``max_file_ops`` operations run at once and at most
``max_file_queue`` wait for a turn (more get a ``busy`` error at once); each turn and
each operation is cut at ``file_timeout_s``, measured on the host (``timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import PurePosixPath

from sandbox._config import SandboxConfig
from sandbox._exceptions import FileOperationError, UnsafePathError
from sandbox._models import FileInfo
from sandbox._runtime.base import Runtime

log = logging.getLogger("sandbox.files")

HELPER = ["/opt/venv/bin/python", "-I", "-S", "/opt/agentbox/files.py"]
MAX_PATH = 1024
MAX_COMPONENT = 255
MAX_LIST = 10_000
MAX_LIST_BYTES = 16 * 1024 * 1024  # a listing's output (10,000 entries of ~1.6 KiB)
MAX_LIST_LINE = 64 * 1024  # one entry; a longer line is not parsed at all
MAX_MESSAGE = 300  # characters of the helper's own error message that are passed on
# The error codes files.py gives (each picks an HTTP status): the box could print any
# other word, "timeout" say, which is the host's to give.
HELPER_CODES = frozenset({"unsafe_path", "not_found", "symlink", "not_a_directory",
                          "unreadable", "is_directory", "not_a_file", "too_large",
                          "no_space", "usage", "os_error"})


def check_path(path: str, *, allow_root: bool = False) -> str:
    """The normalised relative path, or UnsafePathError saying why not."""
    if not isinstance(path, str):
        raise UnsafePathError("path must be a string")
    if "\0" in path:
        raise UnsafePathError("path must not contain NUL bytes")
    if path.startswith("/") or path.startswith("\\"):
        raise UnsafePathError(f"path {path!r} is absolute; give it relative to the working "
                              "directory")
    parts = [p for p in PurePosixPath(path).parts if p not in ("", ".")]
    if ".." in parts:
        raise UnsafePathError(f"path {path!r} contains '..'")
    if not parts and not allow_root:
        raise UnsafePathError("path is empty")
    try:
        size = len(path.encode())
    except UnicodeEncodeError:
        raise UnsafePathError("path is not valid UTF-8") from None
    if size > MAX_PATH:
        raise UnsafePathError(f"path is longer than {MAX_PATH} bytes")
    for part in parts:
        if len(part.encode()) > MAX_COMPONENT:
            raise UnsafePathError(f"path component longer than {MAX_COMPONENT} bytes")
    return "/".join(parts)


def clean_text(text: str, limit: int = MAX_MESSAGE) -> str:
    """Text from the box made safe to put in an answer: valid UTF-8 (a lone surrogate
    would fail the JSON encoder with a 500), and short."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_listing(raw: bytes, max_entries: int = MAX_LIST) -> tuple[list[FileInfo], int]:
    """The entries of the helper's JSON lines (untrusted: the box can write anything into
    the helper's stdout), and how many lines were not entries. Every value is checked for
    what the HTTP answer needs: a finite size and time, a path that encodes."""
    found: list[FileInfo] = []
    skipped = 0
    for line in raw.split(b"\n"):
        if not line:
            continue
        if len(found) >= max_entries:
            skipped += 1
            continue
        entry = _entry(line)
        if entry is None:
            skipped += 1
        else:
            found.append(entry)
    return found, skipped


def _entry(line: bytes) -> FileInfo | None:
    if len(line) > MAX_LIST_LINE:
        return None
    try:
        item = json.loads(line)
        if not isinstance(item, dict) or item.get("truncated"):
            return None
        path, size, modified = item["path"], item["size"], item["modified"]
        if (not isinstance(path, str) or not isinstance(size, int) or isinstance(size, bool)
                or size < 0 or not isinstance(modified, int | float)
                or not math.isfinite(modified)):
            return None
    except (ValueError, KeyError, TypeError, RecursionError):
        return None  # the sandbox cannot make the host choke on a listing
    return FileInfo(path=clean_text(path, MAX_PATH * 4), size=size, modified=float(modified),
                    is_dir=item.get("type") == "dir")


class FileSlots:
    """At most *running* file operations of one session at once, at most *waiting* more
    in line; a turn not had within the deadline is a ``timeout`` error."""

    def __init__(self, running: int, waiting: int) -> None:
        self._free = asyncio.Semaphore(running)
        self.running, self.max_waiting = running, waiting
        self.waiting = 0

    @contextlib.asynccontextmanager
    async def turn(self, what: str, timeout_s: float) -> AsyncIterator[None]:
        if self._free.locked() and self.waiting >= self.max_waiting:
            raise FileOperationError(
                f"{what}: the session already runs {self.running} file operations with "
                f"{self.waiting} more waiting; retry when one has finished", "busy")
        self.waiting += 1
        try:
            async with asyncio.timeout(timeout_s):
                await self._free.acquire()
        except TimeoutError:
            raise FileOperationError(
                f"{what}: no turn within {timeout_s:g}s; the session's other file "
                "operations did not finish (the sandbox may have stopped them)",
                "timeout") from None
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._free.release()


class FileOps:
    """File operations on one session's container, bounded per session (see above)."""

    def __init__(self, runtime: Runtime, config: SandboxConfig,
                 container: Callable[[], str]) -> None:
        self.runtime = runtime
        self.user = config.user
        self.timeout_s = config.file_timeout_s
        self._container = container  # the id now, or a clear error (closed, lost)
        self.slots = FileSlots(config.max_file_ops, config.max_file_queue)

    async def _helper(self, args: list[str], *, stdin: bytes | None = None,
                      max_stdout: int) -> bytes:
        what = " ".join(args[:2])
        try:
            result = await self.runtime.exec(self._container(), [*HELPER, *args],
                                             user=self.user, stdin=stdin,
                                             max_stdout=max_stdout + 1, timeout_s=self.timeout_s)
        except FileOperationError as exc:
            if exc.code == "timeout":
                raise FileOperationError(
                    f"{what}: not finished within {self.timeout_s:g}s (file_timeout_s, on the "
                    "host's clock): the file helper was stopped or blocked inside the "
                    "sandbox; given up", "timeout") from exc
            raise FileOperationError(f"{what}: {exc}", exc.code) from exc
        if result.stdout_truncated:
            raise FileOperationError(f"{args[0]} {args[1] if len(args) > 1 else ''}: output "
                                     f"exceeds {max_stdout} bytes", "too_large")
        if result.exit_code != 0:
            message, code = self._describe(args, result.exit_code, result.stderr)
            raise FileOperationError(message, code)
        return result.stdout

    @staticmethod
    def _describe(args: list[str], code: int, stderr: bytes) -> tuple[str, str]:
        text = stderr.decode(errors="replace")
        try:
            detail = json.loads(text)
            message = clean_text(str(detail.get("message")))
            kind = str(detail.get("error"))
        except (ValueError, AttributeError, RecursionError):
            message, kind = clean_text(text.strip()[-MAX_MESSAGE:]), "failed"
        if kind not in HELPER_CODES:
            kind = "failed"
        if code == 126 or code == 127 or code == -1:
            message = f"the sandbox could not run the file helper (exit {code}): {message}"
        return f"{args[0]} failed ({kind}): {message}", kind

    @contextlib.asynccontextmanager
    async def _turn(self, what: str) -> AsyncIterator[None]:
        self._container()  # a closed or lost session fails now, not after a wait
        async with self.slots.turn(what, self.timeout_s):
            yield

    async def write(self, path: str, data: bytes | AsyncIterable[bytes], max_bytes: int) -> None:
        """Write *data* (bytes, or chunks read only once this session's turn has come, so
        that waiting uploads hold no memory) to *path*."""
        rel = check_path(path)
        if isinstance(data, bytes) and len(data) > max_bytes:
            raise FileOperationError(f"upload of {len(data)} bytes exceeds the limit of "
                                     f"{max_bytes} bytes", "too_large")
        async with self._turn(f"upload {rel}"):
            payload = data if isinstance(data, bytes) else await _collect(data, max_bytes)
            await self._helper(["write", rel, str(max_bytes)], stdin=payload, max_stdout=1024)

    async def read(self, path: str, max_bytes: int) -> bytes:
        rel = check_path(path)
        async with self._turn(f"download {rel}"):
            return await self._helper(["read", rel, str(max_bytes)], max_stdout=max_bytes)

    async def list(self, path: str = "") -> list[FileInfo]:
        rel = check_path(path, allow_root=True)
        async with self._turn(f"list {rel or '.'}"):
            raw = await self._helper(["list", rel, str(MAX_LIST)], max_stdout=MAX_LIST_BYTES)
        # Up to 16 MiB of JSON: parsed in a worker, not on the loop other sessions share.
        found, skipped = await asyncio.to_thread(parse_listing, raw)
        if skipped:
            log.warning("listing of %r: %d lines from the sandbox were not entries or were "
                        "past the %d-entry limit; not listed", rel or ".", skipped, MAX_LIST)
        return found

    async def delete(self, path: str) -> None:
        rel = check_path(path)
        async with self._turn(f"delete {rel}"):
            await self._helper(["delete", rel], max_stdout=1024)


async def _collect(chunks: AsyncIterable[bytes], max_bytes: int) -> bytes:
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise FileOperationError(f"upload exceeds the limit of {max_bytes} bytes",
                                     "too_large")
        parts.append(chunk)
    return b"".join(parts)
