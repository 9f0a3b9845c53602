"""The run directory's files and sockets, as the host writes and checks them.

The run dir is bind-mounted at ``/run/kernel`` and writable by the box, so every
file the host puts there is written without following a link the box planted
(``O_NOFOLLOW|O_EXCL``), and a socket's peer must live in the box's container.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox._exceptions import DeadlineExceeded, SandboxError
from sandbox._runtime.base import CONTAINER_RUN_DIR

INIT_SOCKET = "init.sock"
INIT_KEY_FILE = "init.key"
PORTS = {"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5}


class RunDirError(SandboxError):
    """The host could not write what it needs into the run dir (the box tampered with it)."""


def clear_run_dir(run_dir: Path) -> None:
    """Remove everything in the run dir (before a replacement container), links and
    directories the box planted included, never following a link."""
    for child in run_dir.iterdir():
        try:
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        except OSError as exc:
            raise RunDirError(f"cannot clear {child.name} from the run directory: {exc}"
                              ) from exc


@dataclass(frozen=True)
class KernelEndpoint:
    """One kernel generation's connection: fresh HMAC key, fresh socket names."""

    generation: int
    connection_file: str  # name inside the run dir, e.g. "kernel-3.json"
    host_info: dict[str, Any]  # for jupyter_client on the host (host socket paths)

    def socket_paths(self, run_dir: Path) -> list[Path]:
        return [run_dir / f"k{self.generation}-{port}" for port in PORTS.values()]


def _write_for_kernel(path: Path, text: str, uid: int, gid: int, mode: int) -> None:
    """Write a file the kernel (uid:gid) can read, into a run dir it can write.

    The sandbox may have planted a symlink, a FIFO or a directory under this name:
    whatever is there is removed (unlink never follows links; a directory tree goes with
    ``shutil.rmtree``, which does not follow links either, and the run dir's tmpfs bounds
    its size), a new regular file is created exclusively and without blocking, and the
    open file is chowned, never a path. Failing that, :class:`RunDirError`: the session
    replaces the box rather than answer with a crash.
    """
    try:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            shutil.rmtree(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_NONBLOCK, mode)
        with os.fdopen(fd, "w") as fh:
            if os.geteuid() == 0:
                os.fchown(fh.fileno(), uid, gid)
            fh.write(text)
    except OSError as exc:
        raise RunDirError(f"cannot write {path.name} in the session's run directory "
                          f"({exc.strerror or exc}); the sandbox tampered with it") from exc


def write_connection_file(path: Path, info: dict[str, Any], uid: int, gid: int) -> None:
    """A kernel's connection file, written safely (:func:`_write_for_kernel`)."""
    _write_for_kernel(path, json.dumps(info), uid, gid, 0o600)


def write_init_key(run_dir: Path, uid: int, gid: int) -> bytes:
    """A fresh key for the next container's init, written where it reads it at boot."""
    key = secrets.token_bytes(32)
    _write_for_kernel(run_dir / INIT_KEY_FILE, key.hex(), uid, gid, 0o400)
    return key



def connection_info(prefix: str, key: str, *, signature_scheme: str = "hmac-sha256",
                    kernel_name: str = "agentbox") -> dict[str, Any]:
    """A kernel's connection info as the kernel sees it: ipc sockets
    ``/run/kernel/<prefix>-<port>``, the fixed ports 1..5."""
    return {"transport": "ipc", "ip": f"{CONTAINER_RUN_DIR}/{prefix}", "key": key,
            "signature_scheme": signature_scheme, "kernel_name": kernel_name, **PORTS}


def write_endpoint(run_dir: Path, generation: int, uid: int, gid: int) -> KernelEndpoint:
    """Write ``kernel-<g>.json`` for the kernel (container paths, 256-bit key)."""
    info = connection_info(f"k{generation}", secrets.token_hex(32))
    # A name the box cannot guess, so it cannot plant anything there beforehand.
    name = f"kernel-{generation}-{secrets.token_hex(4)}.json"
    write_connection_file(run_dir / name, info, uid, gid)
    return KernelEndpoint(generation, name, {**info, "ip": str(run_dir / f"k{generation}")})


def container_peer(container_id: str | None) -> Callable[[int, int, int], str | None]:
    """A peer check for :func:`sandbox._zmtp.open_unix`: the process that answered on a
    run-dir socket must live in the session's container (its cgroup names the container),
    so a name the box swapped for a link to a host socket is refused."""
    def check(pid: int, uid: int, gid: int) -> str | None:
        if not container_id:
            return None  # not started yet: nothing to compare with
        try:
            cgroups = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            return f"pid {pid} cannot be looked up"
        if container_id not in cgroups:
            return f"pid {pid} (uid {uid}) is not in container {container_id[:12]}"
        return None
    return check



async def wait_for_sockets(paths: list[Path], deadline: float, *,
                           exited: Callable[[], Awaitable[bool]] | None = None,
                           check_every: float = 0.5,
                           on_deadline: Callable[[], Exception] | None = None,
                           on_exit: Callable[[], Exception] | None = None) -> None:
    """Until every socket in *paths* exists (the kernel bound them), by *deadline*.

    *exited* is asked every *check_every* seconds and returns True once the kernel or
    its container is known gone, so that a kernel that crashes at start fails fast.
    The exceptions raised are the caller's (*on_deadline*, *on_exit*)."""
    next_check = time.monotonic() + check_every
    while not all(p.exists() for p in paths):
        now = time.monotonic()
        if now >= deadline:
            raise (on_deadline() if on_deadline is not None else DeadlineExceeded(
                "the kernel did not bind its sockets before the deadline"))
        if exited is not None and now >= next_check:
            next_check = now + check_every
            if await exited():
                raise (on_exit() if on_exit is not None
                       else SandboxError("the kernel exited while starting"))
        await asyncio.sleep(0.005)
