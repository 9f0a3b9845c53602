"""A host uid of its own for every session's box.

Per-uid kernel quotas are counted for the uid across the whole host, not per container:
inotify instances (``fs.inotify.max_user_instances``, 128 here) and watches, POSIX
message queue bytes (``RLIMIT_MSGQUEUE``), pending signals (``RLIMIT_SIGPENDING``),
epoll watches. With every box running as uid 1000, one box that used them all up
(``inotify_init`` until EMFILE) stopped every other box, and the host's own uid 1000,
from making any. So each session's box runs as a uid (and gid) of its own, leased here.

The uids start at :data:`UID_BASE`: inside systemd's unassigned 1879048192-2147483647
block, clear of the 100000+ ranges /etc/subuid gives rootless containers, below 2**31
(signed-uid bugs). A lease is an ``flock`` on ``LEASE_DIR/<uid>``, taken by the lowest
free uid: unique across every process of this host, released when the session ends or,
if the process dies, by the kernel with its descriptors. Lease files are never unlinked
(an unlink would race a second process locking the same name): there are as many as the
most sessions ever open at once, empty.

It needs root (the run dir is chowned to the uid, or mounted with ``uid=``); without
root, or with ``per_session_uid=False``, a session keeps ``config.user``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from pathlib import Path

from sandbox._config import SandboxConfig

log = logging.getLogger("sandbox.uids")

UID_BASE = 1_900_000_000
UID_COUNT = 1_000_000  # sessions open at once on one host, at most
LEASE_DIR = Path(os.environ.get("AGENTBOX_UID_LEASE_DIR", "/run/agentbox/uids"))

_lock = threading.Lock()
_warned = False


class UidLease:
    """One uid held by this process until :meth:`release` (idempotent).

    :meth:`release` takes no lock: it also runs from a session's ``weakref.finalize``,
    which the garbage collector may call in any thread at any allocation, including
    one inside :func:`lease_uid`'s search while that thread holds ``_lock`` (a
    non-reentrant lock taken there deadlocked the thread). ``list.pop`` is atomic, so
    the descriptor is closed exactly once."""

    def __init__(self, uid: int, fd: int) -> None:
        self.uid = uid
        self._fd = [fd]

    def release(self) -> None:
        try:
            fd = self._fd.pop()
        except IndexError:
            return  # released already
        os.close(fd)  # drops the flock

    @property
    def held(self) -> bool:
        return bool(self._fd)


def _try(uid: int) -> int | None:
    fd = os.open(LEASE_DIR / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def lease_uid() -> UidLease:
    """The lowest uid from UID_BASE that no session of this host holds, now held."""
    LEASE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _lock:  # one search at a time in this process (flock itself is per open file)
        for uid in range(UID_BASE, UID_BASE + UID_COUNT):
            fd = _try(uid)
            if fd is not None:
                return UidLease(uid, fd)
    raise OSError(f"all {UID_COUNT} session uids from {UID_BASE} are held")


def for_session(config: SandboxConfig) -> tuple[SandboxConfig, UidLease | None]:
    """*config* with a uid:gid of the session's own, and the lease to release at its end;
    unchanged (no lease) when that is off or cannot work here."""
    global _warned
    if not config.per_session_uid:
        return config, None
    if os.geteuid() != 0:
        if not _warned:
            _warned = True
            log.warning("per-session uids need root (the run dir is made the box's): every "
                        "box runs as %s and shares that uid's kernel quotas", config.user)
        return config, None
    lease = lease_uid()
    return config.with_(user=f"{lease.uid}:{lease.uid}"), lease
