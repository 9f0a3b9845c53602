"""Files in a session's working directory, moved through ``docker exec``.

Docker's archive API cannot serve a read-only container with tmpfs mounts, so
every operation runs ``/opt/agentbox/files.py`` inside the container as the
sandbox user: the host never opens a path in the sandbox's filesystem, and
the helper refuses symlinks on the way (see its docstring). Paths are checked
here first, so a bad one fails at once with :class:`UnsafePathError`.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath

from sandbox._exceptions import FileOperationError, UnsafePathError
from sandbox._models import FileInfo
from sandbox._runtime.base import Runtime

HELPER = ["/opt/venv/bin/python", "-I", "-S", "/opt/agentbox/files.py"]
MAX_PATH = 1024
MAX_COMPONENT = 255
MAX_LIST = 10_000


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
    if len(path.encode()) > MAX_PATH:
        raise UnsafePathError(f"path is longer than {MAX_PATH} bytes")
    for part in parts:
        if len(part.encode()) > MAX_COMPONENT:
            raise UnsafePathError(f"path component longer than {MAX_COMPONENT} bytes")
    return "/".join(parts)


class FileOps:
    """File operations on one container. Called by the session, one at a time or not."""

    def __init__(self, runtime: Runtime, user: str) -> None:
        self.runtime = runtime
        self.user = user

    async def _helper(self, container_id: str, args: list[str], *, stdin: bytes | None = None,
                      max_stdout: int = 64 * 1024 * 1024, timeout_s: float = 120.0) -> bytes:
        result = await self.runtime.exec(container_id, [*HELPER, *args], user=self.user,
                                         stdin=stdin, max_stdout=max_stdout + 1,
                                         timeout_s=timeout_s)
        if result.exit_code != 0:
            message, code = self._describe(args, result.exit_code, result.stderr)
            raise FileOperationError(message, code)
        if result.stdout_truncated:
            raise FileOperationError(f"{args[0]} {args[1] if len(args) > 1 else ''}: output "
                                     f"exceeds {max_stdout} bytes", "too_large")
        return result.stdout

    @staticmethod
    def _describe(args: list[str], code: int, stderr: bytes) -> tuple[str, str]:
        try:
            detail = json.loads(stderr.decode(errors="replace"))
            message = str(detail.get("message"))
            kind = str(detail.get("error"))
        except (ValueError, AttributeError):
            message, kind = stderr.decode(errors="replace").strip()[-300:], "failed"
        if code == 126 or code == 127 or code == -1:
            message = f"the sandbox could not run the file helper (exit {code}): {message}"
        return f"{args[0]} failed ({kind}): {message}", kind

    async def write(self, container_id: str, path: str, data: bytes, max_bytes: int) -> None:
        rel = check_path(path)
        if len(data) > max_bytes:
            raise FileOperationError(f"upload of {len(data)} bytes exceeds the limit of "
                                     f"{max_bytes} bytes", "too_large")
        await self._helper(container_id, ["write", rel, str(max_bytes)], stdin=data,
                           max_stdout=1024)

    async def read(self, container_id: str, path: str, max_bytes: int) -> bytes:
        rel = check_path(path)
        return await self._helper(container_id, ["read", rel, str(max_bytes)],
                                  max_stdout=max_bytes)

    async def list(self, container_id: str, path: str = "") -> list[FileInfo]:
        rel = check_path(path, allow_root=True)
        raw = await self._helper(container_id, ["list", rel, str(MAX_LIST)],
                                 max_stdout=16 * 1024 * 1024)
        found: list[FileInfo] = []
        for line in raw.splitlines():
            try:
                item = json.loads(line)
                if item.get("truncated"):
                    continue
                found.append(FileInfo(path=str(item["path"]), size=int(item["size"]),
                                      modified=float(item["modified"]),
                                      is_dir=item.get("type") == "dir"))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # the sandbox cannot make the host choke on a listing
        return found

    async def delete(self, container_id: str, path: str) -> None:
        rel = check_path(path)
        await self._helper(container_id, ["delete", rel], max_stdout=1024)
