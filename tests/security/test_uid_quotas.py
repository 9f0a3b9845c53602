"""Per-uid kernel quotas are not shared between sessions (sandbox/_uids.py).

The kernel counts some limits per uid across the whole host, whatever the container:
inotify instances (``fs.inotify.max_user_instances``), POSIX message queue bytes
(``RLIMIT_MSGQUEUE``)... With every box running as uid 1000, one box that used up its
inotify instances left every other box, and the host's own uid 1000, with none
(measured here: 128, then EMFILE for everyone). Now each session's box runs as a uid of
its own. Under gVisor these counts live in each sandbox's own kernel anyway; the
tests run there too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox import Session
from sandbox import _uids as uids
from sandbox._uids import UID_BASE
from tests.security.conftest import container_attrs, open_box, probe

pytestmark = pytest.mark.usefixtures("engine")

EXHAUST = r'''
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
rt = ctypes.CDLL("librt.so.1", use_errno=True)
held_inotify, held_mq = [], []   # kept open: the kernel's globals keep them for the box's life
def until_refused(make, held, most):
    while len(held) < most:
        fd = make()
        if fd < 0:
            return errno.errorcode.get(ctypes.get_errno(), "?")
        held.append(fd)
    return None
print(json.dumps({
    "uid": os.getuid(),
    "inotify": [until_refused(libc.inotify_init, held_inotify, 4000), len(held_inotify)],
    "mqueue": [until_refused(lambda: rt.mq_open(f"/q-{len(held_mq)}".encode(),
                                                os.O_CREAT | os.O_RDWR, 0o600, None),
                             held_mq, 200), len(held_mq)],
}))
'''

ONE_MORE = r'''
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
rt = ctypes.CDLL("librt.so.1", use_errno=True)
def one(fd):
    return "ok" if fd >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")
print(json.dumps({"uid": os.getuid(), "inotify": one(libc.inotify_init()),
                  "mqueue": one(rt.mq_open(b"/other", os.O_CREAT | os.O_RDWR, 0o600, None))}))
'''


@pytest.fixture(scope="module")
def boxes(runtime: str) -> Iterator[tuple[Session, Session]]:
    with open_box(runtime) as first, open_box(runtime) as second:
        yield first, second


def test_two_sessions_run_as_different_uids(boxes: tuple[Session, Session], engine: Any,
                                            runtime: str) -> None:
    uids = [box.config.uid for box in boxes]
    assert len(set(uids)) == 2 and all(uid >= UID_BASE for uid in uids), uids
    for box, uid in zip(boxes, uids, strict=True):
        assert box.config.gid == uid
        assert probe(box, "import json, os; print(json.dumps([os.getuid(), os.getgid()]))") \
            == [uid, uid]
        assert container_attrs(engine, box)["Config"]["User"] == f"{uid}:{uid}"
        # The host side made for the box is the box's uid's: its run dir.
        run_dir = box._async.run_dir
        assert (run_dir.stat().st_uid, run_dir.stat().st_gid) == (uid, uid)
        # The home tmpfs too (the box sees itself as its owner).
        assert probe(box, "import json, os; st = os.stat('.'); "
                          "print(json.dumps([st.st_uid, st.st_mode & 0o777]))") == [uid, 0o700]


def test_one_session_exhausting_inotify_and_mqueues_leaves_others_theirs(
        boxes: tuple[Session, Session], runtime: str) -> None:
    hog, other = boxes
    used = probe(hog, EXHAUST, timeout=120)
    if runtime == "runc":
        # The host kernel's per-uid limits, reached: the attack is real.
        with open("/proc/sys/fs/inotify/max_user_instances") as fh:
            assert used["inotify"] == ["EMFILE", int(fh.read())]
        assert used["mqueue"][0] == "EMFILE" and used["mqueue"][1] >= 1
    else:
        # gVisor counts inotify instances and queues in its own kernel, per sandbox:
        # the loop ends at the box's open-file limit (1024) or its own cap of 200.
        assert used["inotify"][0] in ("EMFILE", None) and used["inotify"][1] >= 128
    found = probe(other, ONE_MORE)
    assert found == {"uid": other.config.uid, "inotify": "ok", "mqueue": "ok"}
    # The host's own uid 1000 still makes one too.
    assert host_inotify_as(1000) == "ok"


def host_inotify_as(uid: int) -> str:
    # The system Python: this venv may live where uid 1000 cannot read (under /root).
    code = ("import ctypes, errno; libc = ctypes.CDLL(None, use_errno=True); fd = libc.inotify_init();"
            "print('ok' if fd >= 0 else errno.errorcode[ctypes.get_errno()])")
    done = subprocess.run(["/usr/bin/python3", "-I", "-c", code], user=uid, group=uid,
                          capture_output=True, text=True, timeout=30, cwd="/")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_uids_are_leased_host_wide_and_released(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # A lease directory of this test's own: the host's is in use by every other session.
    monkeypatch.setattr(uids, "LEASE_DIR", tmp_path)
    lease_uid = uids.lease_uid
    first, second = lease_uid(), lease_uid()
    try:
        assert (first.uid, second.uid) == (UID_BASE, UID_BASE + 1)
        # Another process of this host cannot take a held uid: it gets the next free one.
        taken = subprocess.run([sys.executable, "-c", "from sandbox._uids import lease_uid; "
                                "print(lease_uid().uid)"], capture_output=True, text=True,
                               timeout=30, check=True,
                               env={**os.environ, "AGENTBOX_UID_LEASE_DIR": str(tmp_path)})
        assert int(taken.stdout) not in (first.uid, second.uid)
        freed = first.uid
        first.release()
        first.release()  # idempotent
        again = lease_uid()
        assert again.uid == freed  # the lowest free uid is reused
        again.release()
    finally:
        second.release()


def test_per_session_uid_can_be_turned_off(runtime: str) -> None:
    with open_box(runtime, per_session_uid=False) as box:
        assert box.config.uid == 1000
        assert probe(box, "import json, os; print(json.dumps(os.getuid()))") == 1000

