"""A session's run directory on the host, bind-mounted into its container at ``/run/kernel``.

The kernel binds its ZMQ sockets there and agentbox-init its ``init.sock``, so the
sandbox user must be able to create files in it. As a plain directory that would let
code in the box write to the host's disk without limit and run binaries it drops
there. When the host process may mount (root), the directory is therefore a tmpfs of
its own: :data:`RUN_DIR_BYTES` and :data:`RUN_DIR_INODES` at most, ``noexec``,
``nosuid``, ``nodev``, owned by the sandbox user. Otherwise it stays a plain
directory, and ``agentbox doctor`` says so.

A mounted run dir must be unmounted before it can be removed:
:func:`remove_run_dir` does both, and every place that removes one (closing a
session, the orphan sweep, the provisioner) goes through it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger("sandbox.rundir")

# The files there are a connection file, the init key and sockets (no data): a few
# pages. The cap is what stops a sandbox from filling the host's disk through it.
RUN_DIR_BYTES = 1024 * 1024
RUN_DIR_INODES = 256

_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8
_MNT_DETACH, _UMOUNT_NOFOLLOW = 2, 8

_libc: ctypes.CDLL | None = None
_warned = False


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    return _libc


def _mount_tmpfs(path: Path, uid: int, gid: int) -> None:
    options = (f"size={RUN_DIR_BYTES},nr_inodes={RUN_DIR_INODES},mode=0700,"
               f"uid={uid},gid={gid}").encode()
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    if _c().mount(b"agentbox-run", os.fsencode(path), b"tmpfs", flags, options) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))


def can_mount() -> bool:
    """Whether run dirs get their own capped tmpfs (the host process runs as root)."""
    return os.geteuid() == 0


def make_run_dir(path: Path, uid: int, gid: int) -> bool:
    """Create *path* for a container whose kernel runs as uid:gid; True if size-capped."""
    global _warned
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.mkdir(mode=0o700)
    if not can_mount():
        if not _warned:
            _warned = True
            log.warning("run directories under %s are plain directories (a capped tmpfs "
                        "needs root): a sandbox can write to this disk through /run/kernel",
                        path.parent)
        return False
    try:
        _mount_tmpfs(path, uid, gid)
        return True
    except OSError as exc:
        # Root, but no mount (a container without CAP_SYS_ADMIN, say): still usable.
        os.chown(path, uid, gid)
        if not _warned:
            _warned = True
            log.warning("cannot mount a tmpfs on run directories (%s): they are plain "
                        "directories, and a sandbox can write to this disk through "
                        "/run/kernel", exc)
        return False


def probe_capped() -> tuple[bool, str]:
    """``agentbox doctor``: whether run dirs here get their capped tmpfs, and why not."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="agentbox-probe-"))
    try:
        if not can_mount():
            return False, "not root: run dirs are plain directories the sandbox can fill"
        probe = root / "s-probe"
        probe.mkdir(mode=0o700)
        try:
            _mount_tmpfs(probe, os.getuid(), os.getgid())
        except OSError as exc:
            return False, f"cannot mount a tmpfs ({exc.strerror}): run dirs are plain directories"
        return True, (f"each a tmpfs of {RUN_DIR_BYTES // 1024} KiB, {RUN_DIR_INODES} inodes, "
                      "noexec,nosuid,nodev")
    finally:
        _unmount(root / "s-probe")
        remove_run_dir(root)


def _unmount(path: Path) -> None:
    # Lazily: the container's own bind mount of it may still be there while it dies.
    for _ in range(4):  # a run dir is mounted once; more would be someone else's doing
        if not os.path.ismount(path):
            return
        if _c().umount2(os.fsencode(path), _MNT_DETACH | _UMOUNT_NOFOLLOW) != 0:
            err = ctypes.get_errno()
            log.warning("cannot unmount run directory %s: %s", path, os.strerror(err))
            return


def remove_run_dir(path: Path | str) -> None:
    """Unmount (if it is a mount) and remove a run directory; never raises."""
    path = Path(path)
    try:
        _unmount(path)
    except OSError as exc:
        log.warning("cannot unmount run directory %s: %s", path, exc)
    shutil.rmtree(path, ignore_errors=True)
