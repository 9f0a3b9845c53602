"""The box's posture, read from inside the container (Docker silently drops limits
it cannot enforce, so ``docker inspect`` alone proves nothing)."""

from __future__ import annotations

import json

import pytest

from sandbox import SandboxConfig, Session
from sandbox._uids import UID_BASE

pytestmark = pytest.mark.usefixtures("engine")

PROBE = r"""
import json, os, socket
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
def cg(*paths):
    for p in paths:
        try:
            return open(p).read().strip()
        except OSError:
            pass
def can_write(path):
    try:
        with open(path, "w") as fh:
            fh.write("x")
        return True
    except OSError:
        return False
def tcp(host, port):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()
def resolves(name):
    try:
        socket.getaddrinfo(name, 80)
        return True
    except OSError:
        return False
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(),
    "caps": {k: status[k].strip() for k in ("CapEff", "CapPrm", "CapBnd", "CapAmb")},
    "no_new_privs": status["NoNewPrivs"].strip(), "seccomp": status["Seccomp"].strip(),
    "memory": cg("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max"),
    "memsw": cg("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes", "/sys/fs/cgroup/memory.swap.max"),
    "pids": cg("/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/pids.max"),
    "cpu_quota": cg("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), "cpu_period": cg("/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
    "cpu_max": cg("/sys/fs/cgroup/cpu.max"),
    "nofile": open("/proc/self/limits").read(),
    "interfaces": sorted(os.listdir("/sys/class/net")),
    "writable": {p: can_write(p) for p in ("/probe", "/etc/probe", "/usr/probe", "/opt/venv/probe", "/proc/sys/kernel/hostname", "/proc/sysrq-trigger")},
    "tmp_writable": can_write("/tmp/probe"), "home_writable": can_write(os.path.expanduser("~/probe")),
    "tcp_out": tcp("1.1.1.1", 53) or tcp("8.8.8.8", 443),
    "dns": resolves("pypi.org"),
    "docker_sock": any(os.path.exists(p) for p in ("/var/run/docker.sock", "/run/docker.sock")),
    "env": sorted(os.environ),
    "mounts": [l.split()[1] for l in open("/proc/self/mounts")],
}))
"""


@pytest.fixture(scope="module")
def posture() -> dict[str, object]:
    config = SandboxConfig(memory_mb=384, pids=123, cpus=0.5, open_files=777,
                           env={"AGENTBOX_TEST_VISIBLE": "yes"})
    with Session(config) as box:
        result = box.execute(PROBE)
    assert result.ok, result
    return dict(json.loads(result.stdout))


def test_runs_as_non_root_without_capabilities(posture: dict[str, object]) -> None:
    # A host uid of the session's own (sandbox/_uids.py), never root, never 1000.
    assert posture["uid"] >= UID_BASE and posture["gid"] == posture["uid"]
    assert posture["caps"] == {k: "0000000000000000" for k in ("CapEff", "CapPrm", "CapBnd",
                                                               "CapAmb")}
    assert posture["no_new_privs"] == "1"
    assert posture["seccomp"] == "2"  # filter mode


def test_cgroup_limits_are_the_configured_ones(posture: dict[str, object]) -> None:
    assert int(str(posture["memory"])) == 384 * 1024 * 1024
    if posture["memsw"] is not None and str(posture["memsw"]).isdigit():
        assert int(str(posture["memsw"])) == 384 * 1024 * 1024  # no swap beyond memory
    assert posture["pids"] == "123"
    if posture["cpu_max"]:
        quota, period = str(posture["cpu_max"]).split()
    else:
        quota, period = str(posture["cpu_quota"]), str(posture["cpu_period"])
    assert int(quota) / int(period) == pytest.approx(0.5)
    assert "Max open files            777                  777" in str(posture["nofile"])


def test_root_and_system_paths_are_read_only(posture: dict[str, object]) -> None:
    assert posture["writable"] == {p: False for p in posture["writable"]}  # type: ignore[union-attr]
    assert posture["tmp_writable"] and posture["home_writable"]


def test_no_network_but_loopback(posture: dict[str, object]) -> None:
    assert posture["interfaces"] == ["lo"]
    assert posture["tcp_out"] is False
    assert posture["dns"] is False


def test_nothing_of_the_host_is_inside(posture: dict[str, object],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    assert posture["docker_sock"] is False
    env = set(posture["env"])  # type: ignore[arg-type]
    assert "AGENTBOX_TEST_VISIBLE" in env  # the explicit allow-list gets through
    assert "AGENTBOX_RUN_ROOT" not in env  # set in this (host) process, must not leak
    mounts = set(posture["mounts"])  # type: ignore[arg-type]
    assert "/run/kernel" in mounts
    assert not any(m.startswith(("/var/lib/docker", "/root", "/work")) for m in mounts)


def test_host_secret_never_reaches_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTBOX_CANARY_SECRET", "canary-7f3a9")
    with Session() as box:
        result = box.execute(
            "import os, glob\n"
            "read, hits = 0, []\n"
            "for p in glob.glob('/proc/*/environ'):\n"
            "    try:\n"
            "        data = open(p, 'rb').read()\n"
            "    except PermissionError:  # agentbox-init's: it is non-dumpable\n"
            "        continue\n"
            "    read += 1\n"
            "    hits += [p] if b'canary-7f3a9' in data else []\n"
            "print(os.environ.get('AGENTBOX_CANARY_SECRET'), hits, read >= 2)")
    assert result.stdout.strip() == "None [] True"
