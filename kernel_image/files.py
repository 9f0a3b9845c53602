"""agentbox-files: file operations inside the sandbox, confined to the working directory.

Run by the host through ``docker exec`` as the sandbox user (never root), so it
has exactly the sandbox's rights. Every path is walked one component at a time
from the working directory with ``O_NOFOLLOW``: a symlink anywhere on the path
(planted by the sandboxed code, pointing at ``/etc/passwd`` or ``..``) is
refused, never followed. Writes go to a temporary name and are renamed into
place, which replaces a symlink instead of writing through it.

    files.py read PATH MAX_BYTES     -> file bytes on stdout
    files.py write PATH MAX_BYTES    <- file bytes on stdin
    files.py list [PATH] [MAX]       -> JSON lines {path, size, modified, is_dir}
    files.py delete PATH

Errors: exit status 2 and one JSON object on stderr: {"error": code, "message"}.
Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
import sys

ROOT = os.environ.get("AGENTBOX_WORKDIR", "/home/sandbox")
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def parts_of(path: str) -> list[str]:
    if not path or "\0" in path or path.startswith("/"):
        raise Refused("unsafe_path", f"path {path!r} must be relative to the working directory")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise Refused("unsafe_path", f"path {path!r} must not contain '..'")
    return parts


def open_child_dir(fd: int, name: str) -> int:
    """An fd of the directory *name* in *fd*, never through a symlink.

    O_NOFOLLOW alone is not enough: Linux refuses a symlink with ENOTDIR, but gVisor's
    Sentry opens the link's target. So the entry is lstat'ed first and the opened fd
    must be that very inode: a symlink seen, or swapped in between, is refused.
    """
    try:
        seen = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError as exc:
        raise Refused("not_found", f"no directory {name!r} on the path") from exc
    if stat.S_ISLNK(seen.st_mode):
        raise Refused("symlink", f"{name!r} is a symbolic link; not followed")
    if not stat.S_ISDIR(seen.st_mode):
        raise Refused("not_a_directory", f"{name!r} is not a directory")
    try:
        nxt = os.open(name, DIR_FLAGS, dir_fd=fd)
    except FileNotFoundError as exc:
        raise Refused("not_found", f"no directory {name!r} on the path") from exc
    except OSError as exc:  # replaced by a symlink or a file since the lstat
        raise Refused("symlink", f"{name!r} changed while it was opened; not followed") from exc
    opened = os.fstat(nxt)
    if (opened.st_dev, opened.st_ino) != (seen.st_dev, seen.st_ino):
        os.close(nxt)
        raise Refused("symlink", f"{name!r} changed while it was opened; not followed")
    return nxt


def open_dir(parts: list[str], create: bool = False) -> int:
    """An fd of ROOT/parts..., refusing symlinks at every step."""
    fd = os.open(ROOT, DIR_FLAGS)
    try:
        for name in parts:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=fd)
            nxt = open_child_dir(fd, name)
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def cmd_read(path: str, max_bytes: int) -> None:
    parts = parts_of(path)
    dfd = open_dir(parts[:-1])
    try:
        try:
            # O_NONBLOCK: a FIFO planted under the name must not block the open (the
            # type is checked on the fd below; reads of a regular file ignore the flag).
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                         dir_fd=dfd)
        except FileNotFoundError as exc:
            raise Refused("not_found", f"no file {path!r}") from exc
        except OSError as exc:
            st = os.lstat(parts[-1], dir_fd=dfd)
            if stat.S_ISLNK(st.st_mode):
                raise Refused("symlink", f"{path!r} is a symbolic link; not followed") from exc
            raise Refused("unreadable", f"{path!r}: {exc.strerror}") from exc
    finally:
        os.close(dfd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        if stat.S_ISDIR(st.st_mode):
            raise Refused("is_directory", f"{path!r} is a directory")
        raise Refused("not_a_file", f"{path!r} is not a regular file")
    with os.fdopen(fd, "rb") as fh:
        if st.st_size > max_bytes:
            raise Refused("too_large", f"{path!r} is {st.st_size} bytes; the limit is {max_bytes}")
        out = sys.stdout.buffer
        sent = 0
        while chunk := fh.read(1 << 20):
            sent += len(chunk)
            if sent > max_bytes:
                raise Refused("too_large", f"{path!r} grew past the limit of {max_bytes} bytes")
            out.write(chunk)
        out.flush()


def cmd_write(path: str, max_bytes: int) -> None:
    parts = parts_of(path)
    dfd = open_dir(parts[:-1], create=True)
    tmp = f".agentbox-upload-{secrets.token_hex(8)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644, dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as fh:
                received = 0
                while chunk := sys.stdin.buffer.read(1 << 20):
                    received += len(chunk)
                    if received > max_bytes:
                        raise Refused("too_large", f"upload exceeds {max_bytes} bytes")
                    fh.write(chunk)
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISDIR(os.lstat(parts[-1], dir_fd=dfd).st_mode):
                    raise Refused("is_directory", f"{path!r} is a directory")
            os.rename(tmp, parts[-1], src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError as exc:
            if exc.errno == 28:
                raise Refused("no_space", "the working directory is full") from exc
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dfd)
    finally:
        os.close(dfd)


def cmd_list(path: str, max_entries: int) -> None:
    parts = parts_of(path) if path not in ("", ".") else []
    dfd = open_dir(parts)
    count = 0
    prefix = "/".join(parts)
    out = sys.stdout
    try:
        for top, dirs, files, topfd in os.fwalk(dir_fd=dfd, follow_symlinks=False):
            rel_top = os.path.normpath(os.path.join(prefix, top))
            rel_top = "" if rel_top == "." else rel_top
            for name in sorted(dirs) + sorted(files):
                st = os.lstat(name, dir_fd=topfd)
                rel = f"{rel_top}/{name}" if rel_top else name
                kind = ("dir" if stat.S_ISDIR(st.st_mode)
                        else "symlink" if stat.S_ISLNK(st.st_mode) else "file")
                out.write(json.dumps({"path": rel, "size": st.st_size,
                                      "modified": st.st_mtime, "type": kind}) + "\n")
                count += 1
                if count >= max_entries:
                    out.write(json.dumps({"truncated": True}) + "\n")
                    return
            dirs.sort()
    finally:
        os.close(dfd)


def cmd_delete(path: str) -> None:
    import shutil

    parts = parts_of(path)
    dfd = open_dir(parts[:-1])
    try:
        try:
            st = os.lstat(parts[-1], dir_fd=dfd)
        except FileNotFoundError as exc:
            raise Refused("not_found", f"no file {path!r}") from exc
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(parts[-1], dir_fd=dfd)
        else:
            os.unlink(parts[-1], dir_fd=dfd)
    finally:
        os.close(dfd)


def main(argv: list[str]) -> int:
    try:
        op = argv[1] if len(argv) > 1 else ""
        if op == "read":
            cmd_read(argv[2], int(argv[3]))
        elif op == "write":
            cmd_write(argv[2], int(argv[3]))
        elif op == "list":
            cmd_list(argv[2] if len(argv) > 2 else "", int(argv[3]) if len(argv) > 3 else 10000)
        elif op == "delete":
            cmd_delete(argv[2])
        else:
            raise Refused("usage", f"unknown operation {op!r}")
    except Refused as exc:
        sys.stderr.write(json.dumps({"error": exc.code, "message": str(exc)}))
        return 2
    except OSError as exc:
        sys.stderr.write(json.dumps({"error": "os_error", "message": str(exc)}))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
