"""The file methods of :class:`~sandbox.AsyncSession`, on ``sandbox._files.FileOps``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterable

from sandbox._config import SandboxConfig
from sandbox._files import FileOps
from sandbox._models import FileInfo


class SessionFiles:
    """Files in the box's working directory (``/home/sandbox``)."""

    config: SandboxConfig
    last_used: float
    _files: FileOps

    # Each is bounded per session and cut at config.file_timeout_s on the host's clock
    # (FileOperationError "busy", "timeout"), whatever the box does to the helper.
    async def upload(self, path: str, data: bytes | str | AsyncIterable[bytes]) -> None:
        """Write *data* to *path* in the working directory (parents created). Chunks
        (an async iterable) are read only once the session's turn for files has come."""
        payload = (data.encode() if isinstance(data, str)
                   else data if isinstance(data, AsyncIterable) else bytes(data))
        await self._files.write(path, payload, self.config.max_upload_bytes)
        self.last_used = time.monotonic()

    async def download(self, path: str) -> bytes:
        """The bytes of the regular file *path* (symlinks are refused)."""
        data = await self._files.read(path, self.config.max_download_bytes)
        self.last_used = time.monotonic()
        return data

    async def list_files(self, path: str = "") -> list[FileInfo]:
        """Files and directories under *path* (recursive), symlinks not followed."""
        return await self._files.list(path)

    async def delete_file(self, path: str) -> None:
        """Remove a file, symlink or directory tree under the working directory."""
        await self._files.delete(path)
