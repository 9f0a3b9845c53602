"""The box's posture: who the code runs as, what it may do, what limits hold.

Read from inside (Docker silently drops what it cannot enforce, so ``docker inspect``
alone proves nothing) and checked from the host (what the engine and the kernel really
applied). Under gVisor the sandboxed code talks to the Sentry, gVisor's user-space
kernel, not to Linux: several ``/proc`` and ``/sys`` answers differ from runc, and each
test says what gVisor truthfully reports.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from sandbox import Session
from sandbox._uids import UID_BASE
from tests.security.conftest import container_attrs, open_box, probe, read_host_cgroup

MEMORY_MB = 384
PIDS = 123  # gVisor needs ~70 host tasks for an idle sandbox: far below this it cannot start
CPUS = 0.5
OPEN_FILES = 777

POSTURE = r"""
import ctypes, json, os, resource
libc = ctypes.CDLL(None, use_errno=True)
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
status = {k: v.strip() for k, v in status.items()}
def read(*paths):
    for p in paths:
        try:
            return open(p).read().strip()
        except OSError:
            pass
    return None
PR_GET_SECCOMP, PR_CAPBSET_READ, PR_GET_NO_NEW_PRIVS = 21, 23, 39
print(json.dumps({
    "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "egid": os.getegid(),
    "groups": os.getgroups(), "resuid": os.getresuid(),
    "status": {k: v for k, v in status.items() if k.startswith(("Cap", "NoNewPrivs", "Seccomp"))},
    "bounding_set": [c for c in range(64) if libc.prctl(PR_CAPBSET_READ, c, 0, 0, 0) == 1],
    "prctl_no_new_privs": libc.prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0),
    "prctl_seccomp": libc.prctl(PR_GET_SECCOMP, 0, 0, 0, 0),
    "version": read("/proc/version"),
    "memory": read("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max"),
    "memsw": read("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes", "/sys/fs/cgroup/memory.swap.max"),
    "pids": read("/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/pids.max"),
    "cpu_quota": read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
    "cpu_period": read("/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
    "cpu_max": read("/sys/fs/cgroup/cpu.max"),
    "cgroup_entries": sorted(os.listdir("/sys/fs/cgroup")) if os.path.isdir("/sys/fs/cgroup") else None,
    "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
    "limits": read("/proc/self/limits"),
}))
"""

OPEN_TOO_MANY = r"""
import json, os
fds, err = [], None
try:
    for _ in range(5000):
        fds.append(os.open("/dev/null", os.O_RDONLY))
except OSError as exc:
    err = exc.errno
for fd in fds:
    os.close(fd)
print(json.dumps({"opened": len(fds), "errno": err}))
"""


@pytest.fixture(scope="module")
def box(runtime: str) -> Iterator[Session]:
    with open_box(runtime, memory_mb=MEMORY_MB, pids=PIDS, cpus=CPUS,
                  open_files=OPEN_FILES) as session:
        yield session


@pytest.fixture(scope="module")
def posture(box: Session) -> dict[str, Any]:
    found: dict[str, Any] = probe(box, POSTURE)
    return found


def host_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as fh:
        return {k: v.strip() for k, v in (line.split(":", 1) for line in fh if ":" in line)}


def test_runs_as_an_unprivileged_user(posture: dict[str, Any], box: Session, engine: Any,
                                      runtime: str) -> None:
    # A host uid (and gid) of the session's own (sandbox/_uids.py): not root, not 1000.
    uid = box.config.uid
    assert uid >= UID_BASE and box.config.gid == uid
    assert posture["uid"] == posture["euid"] == uid
    assert posture["gid"] == posture["egid"] == uid
    assert posture["resuid"] == [uid, uid, uid]
    assert set(posture["groups"]) <= {uid}
    attrs = container_attrs(engine, box)
    assert attrs["Config"]["User"] == f"{uid}:{uid}"
    # From the host: the process the engine started is not root on the host either.
    # runc: it is agentbox-init itself (the session's uid, no user namespace remapping).
    # gVisor: it is the Sentry, which gVisor runs as the unprivileged 'nobody'.
    host_pid = attrs["State"]["Pid"]
    uids = host_status(host_pid)["Uid"].split()
    assert "0" not in uids, (runtime, uids)
    if runtime == "runc":
        assert uids == [str(uid)] * 4


def test_no_capabilities_at_all(posture: dict[str, Any], runtime: str) -> None:
    caps = {k: v for k, v in posture["status"].items() if k.startswith("Cap")}
    expected = {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"}
    if runtime == "runsc":
        # gVisor's /proc/self/status has no CapAmb line (it does not implement ambient
        # capabilities: PR_CAP_AMBIENT fails with EINVAL), the other four are there.
        expected -= {"CapAmb"}
    assert set(caps) == expected
    assert caps == dict.fromkeys(expected, "0000000000000000")
    assert posture["bounding_set"] == []  # PR_CAPBSET_READ: no capability can ever come back


def test_no_new_privileges(posture: dict[str, Any], box: Session, engine: Any,
                           runtime: str) -> None:
    assert posture["prctl_no_new_privs"] == 1
    if runtime == "runc":
        assert posture["status"]["NoNewPrivs"] == "1"
    else:
        assert "NoNewPrivs" not in posture["status"]  # gVisor's status omits the line
    attrs = container_attrs(engine, box)
    assert "no-new-privileges:true" in attrs["HostConfig"]["SecurityOpt"]
    assert host_status(attrs["State"]["Pid"])["NoNewPrivs"] == "1"


def test_syscalls_are_filtered(posture: dict[str, Any], box: Session, engine: Any,
                               runtime: str) -> None:
    attrs = container_attrs(engine, box)
    host = host_status(attrs["State"]["Pid"])
    if runtime == "runc":
        # Docker's default seccomp profile, in filter mode, on the code itself.
        assert posture["status"]["Seccomp"] == "2"
        assert posture["prctl_seccomp"] == 2
        assert host["Seccomp"] == "2"
    else:
        # Under gVisor the sandboxed code's syscalls never reach the host kernel: the
        # Sentry (gVisor's user-space kernel) implements them, and *it* is the filter.
        # runsc runs with --oci-seccomp, so the Sentry also applies the container's
        # profile to the code (Seccomp: 2 inside; sandbox/_runtime/seccomp.py) and reports
        # its own kernel identity; on the host, the Sentry runs under its own seccomp
        # filter, without new privileges, as an unprivileged user.
        assert attrs["HostConfig"]["Runtime"] == "runsc"
        assert posture["status"]["Seccomp"] == "2"
        assert posture["prctl_seccomp"] == 2
        assert posture["version"].startswith("Linux version 4.4.0")  # gVisor's, not the host's
        with open("/proc/version") as fh:
            assert posture["version"] != fh.read().strip()
        assert host["Seccomp"] == "2"
        assert host["NoNewPrivs"] == "1"
        assert "0" not in host["Uid"].split()


def test_cgroup_limits_inside_are_the_configured_ones(posture: dict[str, Any],
                                                      runtime: str) -> None:
    if runtime == "runsc":
        # gVisor exposes no cgroup files to the sandbox (/sys/fs/cgroup is empty): the
        # limits cannot be read inside. They are checked on the host's cgroup below and
        # by effect in test_resources.py (memory bomb -> OOM kill, fork bomb -> contained,
        # CPU spin -> at most the configured share).
        assert not posture["cgroup_entries"]
        assert posture["memory"] is None and posture["pids"] is None
        return
    assert int(posture["memory"]) == MEMORY_MB * 2**20
    assert posture["memsw"] is not None and int(posture["memsw"]) == MEMORY_MB * 2**20  # no swap
    assert posture["pids"] == str(PIDS)
    if posture["cpu_max"]:
        quota, period = posture["cpu_max"].split()
    else:
        quota, period = posture["cpu_quota"], posture["cpu_period"]
    assert int(quota) / int(period) == pytest.approx(CPUS)


def test_cgroup_limits_on_the_host_are_the_configured_ones(box: Session, runtime: str) -> None:
    # Both runtimes put the container (runc: the processes; gVisor: the Sentry, gofer and
    # every host thread backing the sandbox) in a cgroup with exactly these limits.
    cid = box.info.container_id
    assert int(read_host_cgroup(cid, "memory", "memory.limit_in_bytes")) == MEMORY_MB * 2**20
    assert int(read_host_cgroup(cid, "memory", "memory.memsw.limit_in_bytes")) == MEMORY_MB * 2**20
    assert read_host_cgroup(cid, "pids", "pids.max") == str(PIDS)
    quota = int(read_host_cgroup(cid, "cpu", "cpu.cfs_quota_us"))
    period = int(read_host_cgroup(cid, "cpu", "cpu.cfs_period_us"))
    assert quota / period == pytest.approx(CPUS)


def test_open_files_limit_holds(posture: dict[str, Any], box: Session, runtime: str) -> None:
    assert posture["nofile"] == [OPEN_FILES, OPEN_FILES]
    if runtime == "runc":
        assert f"Max open files            {OPEN_FILES}                  {OPEN_FILES}" in posture["limits"]
    else:
        assert posture["limits"] is None  # gVisor has no /proc/<pid>/limits
    # And by effect: the kernel already holds some descriptors, so it gets fewer than 777.
    found = probe(box, OPEN_TOO_MANY)
    assert found["errno"] == 24  # EMFILE
    assert 0 < found["opened"] < OPEN_FILES
